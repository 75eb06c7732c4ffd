package dev.fanoni.hapi.guard;

import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.interceptor.api.Hook;
import ca.uhn.fhir.interceptor.api.Interceptor;
import ca.uhn.fhir.interceptor.api.Pointcut;
import ca.uhn.fhir.parser.DataFormatException;
import ca.uhn.fhir.rest.api.EncodingEnum;
import ca.uhn.fhir.rest.api.server.RequestDetails;
import ca.uhn.fhir.rest.api.server.SystemRequestDetails;
import ca.uhn.fhir.rest.server.RestfulServerUtils;
import ca.uhn.fhir.rest.server.exceptions.ForbiddenOperationException;
import ca.uhn.fhir.util.FhirTerser;
import ca.uhn.fhir.util.OperationOutcomeUtil;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.util.HashSet;
import java.util.Set;
import org.hl7.fhir.instance.model.api.IBase;
import org.hl7.fhir.instance.model.api.IBaseCoding;
import org.hl7.fhir.instance.model.api.IBaseOperationOutcome;
import org.hl7.fhir.instance.model.api.IBaseResource;
import org.hl7.fhir.instance.model.api.IIdType;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Refuses writes that would let anyone but the Fanoni Scheduling sidecar book around the sidecar.
 *
 * <p>Guarded writes (refused with HTTP 403 and an {@code OperationOutcome} unless they come from the
 * sidecar):
 *
 * <ol>
 *   <li>create, update or delete of a {@code Slot} whose new or old status is {@code busy} or
 *       {@code busy-tentative} (blocks, {@code busy-unavailable}, and extra availability, {@code free},
 *       stay writable by whoever HAPI lets write them);
 *   <li>create, update or delete of a lock resource: a {@code Basic} whose id starts with
 *       {@value #LOCK_ID_PREFIX} (the master and the bucket locks), or whose {@code code} has the
 *       coding {@value #FANONI_SYSTEM}|{@value #LOCK_CODE} or |{@value #BUCKET_LOCK_CODE} (old or new
 *       version);
 *   <li>a write that introduces one of the sidecar's markers onto an {@code Appointment} or {@code Slot}:
 *       a {@code meta.tag} with system {@value #BOOKING_REQUEST_SYSTEM} (the booking request id, any
 *       code) or the {@code meta.tag} {@value #FANONI_SYSTEM}|{@value #HOLD_TAG}, that the old version did
 *       not have. Updates that keep the existing markers are allowed (an EHR cancelling a held
 *       Appointment with a plain {@code PUT} works; HAPI keeps a resource's tags across updates anyway).
 * </ol>
 *
 * <p>The sidecar is recognised by the request header {@value #SERVICE_KEY_HEADER} carrying the
 * configured key (compared in constant time). Writes without {@link RequestDetails} or with a
 * {@link SystemRequestDetails} (HAPI's own internal work) are not checked.
 *
 * <p>The hooks are the storage pointcuts {@link Pointcut#STORAGE_PRESTORAGE_RESOURCE_CREATED},
 * {@link Pointcut#STORAGE_PRESTORAGE_RESOURCE_UPDATED} and {@link Pointcut#STORAGE_PRESTORAGE_RESOURCE_DELETED}:
 * HAPI calls them for every resource it writes, for plain REST writes, for each entry of a
 * transaction or batch {@code Bundle}, for conditional writes and for {@code PATCH}. A refusal inside a
 * transaction rolls the whole transaction back. {@code $meta-add}, which adds tags without those
 * pointcuts, is checked at {@link Pointcut#SERVER_INCOMING_REQUEST_PRE_HANDLED}: register the guard on
 * the {@code RestfulServer} (as the JPA starter does with {@code custom-interceptor-classes}).
 *
 * <p>Configuration, for the no-argument constructor (which HAPI's JPA starter uses for classes listed in
 * {@code hapi.fhir.custom-interceptor-classes}): the JVM system property, else the environment
 * variable, {@value #GUARD_KEY}. Without a key the guard still refuses every guarded write (it fails
 * closed) and logs a warning saying so. Depends on nothing beyond HAPI FHIR and the JDK; works with
 * any FHIR version HAPI serves (it reads resources through {@link FhirTerser}).
 */
@Interceptor
public class FanoniGuardInterceptor {

	/** Setting: the service key the sidecar sends in {@value #SERVICE_KEY_HEADER}. */
	public static final String GUARD_KEY = "FANONI_GUARD_KEY";
	/** Request header by which the sidecar identifies itself. */
	public static final String SERVICE_KEY_HEADER = "X-Fanoni-Service-Key";

	/** Fanoni's CodeSystem: lock codes and the hold tag. */
	public static final String FANONI_SYSTEM = "https://fanoni.dev/fhir/CodeSystem/fanoni";
	/** Tag system of the booking request id the sidecar writes on its Appointments and Slots. */
	public static final String BOOKING_REQUEST_SYSTEM = "https://fanoni.dev/fhir/booking-request";
	public static final String LOCK_CODE = "schedule-lock";
	/** The code of the per-bucket locks ({@code fanoni-lock-<schedule>.b<n>}). */
	public static final String BUCKET_LOCK_CODE = "schedule-time-lock";
	public static final String HOLD_TAG = "hold";
	public static final String LOCK_ID_PREFIX = "fanoni-lock-";

	private static final Set<String> BUSY_STATUSES = Set.of("busy", "busy-tentative");

	private static final Logger ourLog = LoggerFactory.getLogger(FanoniGuardInterceptor.class);

	/** Which rule a refused write broke. */
	public enum Rule {
		/** A Slot whose old or new status is busy or busy-tentative. */
		BUSY_SLOT,
		/** A lock resource (Basic). */
		LOCK,
		/** A booking-request tag the old version did not have. */
		BOOKING_TAG,
		/** The hold tag the old version did not have. */
		HOLD_TAG
	}

	/**
	 * Why a write is refused.
	 *
	 * @param rule the rule
	 * @param target what was written, e.g. {@code Slot/123} (or {@code Slot} when it has no id yet)
	 * @param expression the FHIRPath of what was refused, e.g. {@code Slot.status}
	 * @param diagnostics the text the client gets
	 */
	public record Refusal(Rule rule, String target, String expression, String diagnostics) {}

	private final byte[] myKey;

	/**
	 * Reads the key from {@value #GUARD_KEY} (JVM system property, else environment variable). Without
	 * one, every guarded write is refused and a warning is logged.
	 */
	public FanoniGuardInterceptor() {
		this(setting(GUARD_KEY));
	}

	/**
	 * @param theServiceKey the key the sidecar sends in {@value #SERVICE_KEY_HEADER}; blank or
	 *     {@code null}: nobody is recognised as the sidecar, every guarded write is refused
	 */
	public FanoniGuardInterceptor(String theServiceKey) {
		String key = theServiceKey == null ? "" : theServiceKey.trim();
		myKey = key.isEmpty() ? null : key.getBytes(StandardCharsets.UTF_8);
		if (myKey == null) {
			ourLog.warn("The Fanoni guard has no service key ({}): it refuses every write of busy Slots, locks and"
					+ " booking markers, the sidecar's own too. Give HAPI and the sidecar the same key.", GUARD_KEY);
		} else {
			ourLog.info("Fanoni guard active: busy Slots, locks and booking markers are written only by the sidecar");
		}
	}

	/** A guard for the sidecar that sends {@code theServiceKey}; see {@link #FanoniGuardInterceptor(String)}. */
	public static FanoniGuardInterceptor withServiceKey(String theServiceKey) {
		return new FanoniGuardInterceptor(theServiceKey);
	}

	/** Whether a key is configured (without one the guard refuses every guarded write). */
	public boolean hasServiceKey() {
		return myKey != null;
	}

	@Hook(Pointcut.STORAGE_PRESTORAGE_RESOURCE_CREATED)
	public void resourceCreated(IBaseResource theResource, RequestDetails theRequestDetails) {
		guard("create", null, theResource, theRequestDetails);
	}

	/** HAPI passes the stored (old) version first, then the new one. */
	@Hook(Pointcut.STORAGE_PRESTORAGE_RESOURCE_UPDATED)
	public void resourceUpdated(
			IBaseResource theOldResource, IBaseResource theNewResource, RequestDetails theRequestDetails) {
		guard("update", theOldResource, theNewResource, theRequestDetails);
	}

	@Hook(Pointcut.STORAGE_PRESTORAGE_RESOURCE_DELETED)
	public void resourceDeleted(IBaseResource theResource, RequestDetails theRequestDetails) {
		guard("delete", theResource, null, theRequestDetails);
	}

	private void guard(
			String theAction, IBaseResource theOld, IBaseResource theNew, RequestDetails theRequestDetails) {
		if (theRequestDetails == null || theRequestDetails instanceof SystemRequestDetails) {
			return;
		}
		IBaseResource any = theNew != null ? theNew : theOld;
		if (any == null) {
			return;
		}
		FhirContext ctx = theRequestDetails.getFhirContext() != null
				? theRequestDetails.getFhirContext()
				: FhirContext.forCached(any.getStructureFhirVersionEnum());
		String header = theRequestDetails.getHeader(SERVICE_KEY_HEADER);
		Refusal refusal = check(ctx, theAction, theOld, theNew, header);
		if (refusal != null) {
			throw refuse(ctx, theAction, refusal, header);
		}
	}

	/**
	 * {@code $meta-add} adds tags without passing through the storage pointcuts: one that would add a
	 * marker tag (the hold tag, a booking request tag) to an Appointment or Slot is refused here, before
	 * HAPI runs it (unless from the sidecar).
	 */
	@Hook(Pointcut.SERVER_INCOMING_REQUEST_PRE_HANDLED)
	public void incomingRequestPreHandled(RequestDetails theRequestDetails) {
		if (theRequestDetails == null
				|| theRequestDetails instanceof SystemRequestDetails
				|| !"$meta-add".equals(theRequestDetails.getOperation())) {
			return;
		}
		String type = theRequestDetails.getResourceName();
		if (!"Appointment".equals(type) && !"Slot".equals(type)) {
			return;
		}
		String header = theRequestDetails.getHeader(SERVICE_KEY_HEADER);
		FhirContext ctx = theRequestDetails.getFhirContext();
		if (isSidecar(header) || ctx == null || !addsMarkerTag(ctx, theRequestDetails)) {
			return;
		}
		IIdType id = theRequestDetails.getId();
		String target = id != null && id.getIdPart() != null ? type + "/" + id.getIdPart() : type;
		Refusal refusal = new Refusal(Rule.HOLD_TAG, target, type + ".meta.tag", holdTagText("run $meta-add on " + target));
		throw refuse(ctx, "$meta-add", refusal, header);
	}

	/** Whether the body of a {@code $meta-add} request carries a marker tag. */
	private static boolean addsMarkerTag(FhirContext theCtx, RequestDetails theRequestDetails) {
		byte[] body = theRequestDetails.loadRequestContents();
		if (body == null || body.length == 0) {
			return false;
		}
		EncodingEnum encoding = RestfulServerUtils.determineRequestEncodingNoDefault(theRequestDetails);
		IBaseResource parameters;
		try {
			parameters = (encoding == null ? EncodingEnum.JSON : encoding)
					.newParser(theCtx)
					.parseResource(new String(body, StandardCharsets.UTF_8));
		} catch (DataFormatException | IllegalArgumentException e) {
			return false; // HAPI answers 400 for it itself
		}
		for (IBaseCoding coding : theCtx.newTerser().getAllPopulatedChildElementsOfType(parameters, IBaseCoding.class)) {
			if (isMarker(coding)) {
				return true;
			}
		}
		return false;
	}

	private ForbiddenOperationException refuse(FhirContext theCtx, String theAction, Refusal theRefusal, String theHeader) {
		ourLog.info(
				"Refused {} of {} (rule {}): {}",
				theAction,
				theRefusal.target(),
				theRefusal.rule(),
				myKey == null
						? "no service key is configured"
						: theHeader == null
								? "no " + SERVICE_KEY_HEADER + " header"
								: SERVICE_KEY_HEADER + " does not match");
		return forbidden(theCtx, theRefusal);
	}

	/**
	 * The guard's decision: {@code null} when the write may go ahead, else why it is refused.
	 *
	 * @param theAction {@code create}, {@code update} or {@code delete} (used in the text only)
	 * @param theOld the stored version (update, delete), {@code null} for a create
	 * @param theNew the version to be stored (create, update), {@code null} for a delete
	 * @param theServiceKeyHeader the request's {@value #SERVICE_KEY_HEADER} header, or {@code null}
	 */
	Refusal check(
			FhirContext theCtx,
			String theAction,
			IBaseResource theOld,
			IBaseResource theNew,
			String theServiceKeyHeader) {
		if (isSidecar(theServiceKeyHeader)) {
			return null;
		}
		return refusal(theCtx, theAction, theOld, theNew);
	}

	/** Whether {@code theServiceKeyHeader} is the configured key (constant time; never with no key). */
	boolean isSidecar(String theServiceKeyHeader) {
		if (myKey == null || theServiceKeyHeader == null) {
			return false;
		}
		return MessageDigest.isEqual(myKey, theServiceKeyHeader.trim().getBytes(StandardCharsets.UTF_8));
	}

	/**
	 * Why a write by anyone but the sidecar is refused, or {@code null} when it is not a guarded write.
	 * See the class comment for the rules.
	 */
	static Refusal refusal(FhirContext theCtx, String theAction, IBaseResource theOld, IBaseResource theNew) {
		IBaseResource any = theNew != null ? theNew : theOld;
		if (any == null) {
			return null;
		}
		String type = theCtx.getResourceType(any);
		FhirTerser terser = theCtx.newTerser();
		String target = target(type, theOld, theNew);
		String refused = "Refused to " + theAction + " " + target + ": ";

		if ("Slot".equals(type)) {
			String oldStatus = theOld == null ? null : terser.getSinglePrimitiveValueOrNull(theOld, "status");
			String newStatus = theNew == null ? null : terser.getSinglePrimitiveValueOrNull(theNew, "status");
			if (isBusy(oldStatus) || isBusy(newStatus)) {
				return new Refusal(
						Rule.BUSY_SLOT,
						target,
						"Slot.status",
						refused
								+ "Slots that take time (status busy or busy-tentative) are written only by Fanoni Scheduling:"
								+ " book with POST [base]/Appointment/$book (or $hold), cancel with"
								+ " POST [base]/Appointment/<id>/$cancel. Blocks (busy-unavailable) and extra availability"
								+ " (free) can be written directly.");
			}
		}

		if ("Basic".equals(type) && (isLock(terser, theOld) || isLock(terser, theNew))) {
			return new Refusal(
					Rule.LOCK,
					target,
					"Basic",
					refused
							+ "Fanoni Scheduling's lock resources (Basic with id " + LOCK_ID_PREFIX + "* or code "
							+ FANONI_SYSTEM + "|" + LOCK_CODE + ") are written only by Fanoni Scheduling:"
							+ " book with POST [base]/Appointment/$book (or $hold), cancel with"
							+ " POST [base]/Appointment/<id>/$cancel.");
		}

		if (theNew != null && ("Appointment".equals(type) || "Slot".equals(type))) {
			Set<String> oldMarkers = markerTags(theOld);
			for (String marker : markerTags(theNew)) {
				if (oldMarkers.contains(marker)) {
					continue;
				}
				if (marker.startsWith(BOOKING_REQUEST_SYSTEM + "|")) {
					return new Refusal(
							Rule.BOOKING_TAG,
							target,
							type + ".meta.tag",
							refused
									+ "tags with system " + BOOKING_REQUEST_SYSTEM + " are set only by Fanoni"
									+ " Scheduling when it books: book with POST [base]/Appointment/$book (or $hold)."
									+ " Writes that keep the existing tags are allowed.");
				}
				return new Refusal(Rule.HOLD_TAG, target, type + ".meta.tag", holdTagText(theAction + " " + target));
			}
		}
		return null;
	}

	private static String holdTagText(String theWhat) {
		return "Refused to " + theWhat + ": the tag " + FANONI_SYSTEM + "|" + HOLD_TAG + " is set only by Fanoni"
				+ " Scheduling when it holds: hold with POST [base]/Appointment/$hold, confirm with"
				+ " POST [base]/Appointment/<id>/$confirm. Writes that keep an existing tag are allowed.";
	}

	private static boolean isBusy(String theSlotStatus) {
		return theSlotStatus != null && BUSY_STATUSES.contains(theSlotStatus);
	}

	private static boolean isLock(FhirTerser theTerser, IBaseResource theBasic) {
		if (theBasic == null) {
			return false;
		}
		IIdType id = theBasic.getIdElement();
		if (id != null && id.getIdPart() != null && id.getIdPart().startsWith(LOCK_ID_PREFIX)) {
			return true;
		}
		for (IBase coding : theTerser.getValues(theBasic, "code.coding")) {
			if (FANONI_SYSTEM.equals(theTerser.getSinglePrimitiveValueOrNull(coding, "system"))
					&& Set.of(LOCK_CODE, BUCKET_LOCK_CODE)
							.contains(theTerser.getSinglePrimitiveValueOrNull(coding, "code"))) {
				return true;
			}
		}
		return false;
	}

	/** The marker tags of a resource, as {@code system|code}: booking request tags and the hold tag. */
	private static Set<String> markerTags(IBaseResource theResource) {
		Set<String> markers = new HashSet<>();
		if (theResource == null || theResource.getMeta() == null || theResource.getMeta().getTag() == null) {
			return markers;
		}
		for (IBaseCoding tag : theResource.getMeta().getTag()) {
			if (isMarker(tag)) {
				markers.add(tag.getSystem() + "|" + (tag.getCode() == null ? "" : tag.getCode()));
			}
		}
		return markers;
	}

	private static boolean isMarker(IBaseCoding theCoding) {
		return BOOKING_REQUEST_SYSTEM.equals(theCoding.getSystem())
				|| (FANONI_SYSTEM.equals(theCoding.getSystem()) && HOLD_TAG.equals(theCoding.getCode()));
	}

	private static String target(String theType, IBaseResource theOld, IBaseResource theNew) {
		for (IBaseResource resource : new IBaseResource[] {theNew, theOld}) {
			if (resource != null
					&& resource.getIdElement() != null
					&& resource.getIdElement().getIdPart() != null) {
				return theType + "/" + resource.getIdElement().getIdPart();
			}
		}
		return theType;
	}

	/** The 403 for {@code theRefusal}: an OperationOutcome with one issue (error, forbidden). */
	static ForbiddenOperationException forbidden(FhirContext theCtx, Refusal theRefusal) {
		IBaseOperationOutcome outcome = OperationOutcomeUtil.newInstance(theCtx);
		IBase issue = OperationOutcomeUtil.addIssue(theCtx, outcome, "error", theRefusal.diagnostics(), null, "forbidden");
		OperationOutcomeUtil.addExpressionToIssue(theCtx, issue, theRefusal.expression());
		return new ForbiddenOperationException(theRefusal.diagnostics(), outcome);
	}

	private static String setting(String theName) {
		String value = System.getProperty(theName);
		if (value == null || value.isBlank()) {
			value = System.getenv(theName);
		}
		return value == null ? "" : value.trim();
	}
}
