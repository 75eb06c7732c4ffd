package dev.fanoni.hapi.forwarding;

import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.util.FhirTerser;
import java.util.List;
import java.util.Objects;
import java.util.regex.Pattern;
import org.hl7.fhir.instance.model.api.IBase;
import org.hl7.fhir.instance.model.api.IBaseConformance;

/**
 * Fanoni Scheduling's operations as HAPI sees them, in one table: each one listed here is forwarded
 * to the sidecar by {@link FanoniForwardingInterceptor} and listed in HAPI's own CapabilityStatement
 * with its definition's canonical URL. The canonical URLs and the levels are those of the sidecar's
 * {@code plugin/resources/OperationDefinition-*.json} (the unit tests compare them).
 */
public final class FanoniOperations {

	/** Where the sidecar's OperationDefinitions live: {@code <this><id>}. */
	public static final String DEFINITION_BASE = "https://fanoni.dev/fhir/OperationDefinition/";

	/** FHIR id: the only ids the forwarded instance-level paths may carry. */
	private static final String ID = "[A-Za-z0-9\\-.]{1,64}";

	/**
	 * One operation.
	 *
	 * @param resourceType the resource it is invoked on ({@code Appointment})
	 * @param name its name without the {@code $} ({@code find})
	 * @param instance {@code true} for {@code Type/<id>/$name}, {@code false} for {@code Type/$name}
	 * @param acceptsGet whether {@code GET} is forwarded too ({@code POST} always is): the operations
	 *     that change nothing ({@code affectsState} false)
	 * @param definitionId the id of its OperationDefinition ({@code schedule-find})
	 */
	public record Operation(String resourceType, String name, boolean instance, boolean acceptsGet, String definitionId) {

		/** The OperationDefinition's canonical URL. */
		public String definitionUrl() {
			return DEFINITION_BASE + definitionId;
		}

		Pattern path() {
			return Pattern.compile(resourceType + (instance ? "/" + ID : "") + "/\\$" + Pattern.quote(name));
		}
	}

	/** Every operation the sidecar serves. */
	public static final List<Operation> ALL = List.of(
			new Operation("Appointment", "find", false, true, "find"),
			new Operation("Schedule", "find", true, true, "schedule-find"),
			new Operation("Appointment", "hold", false, false, "hold"),
			new Operation("Appointment", "book", false, false, "book"),
			new Operation("Appointment", "confirm", true, false, "confirm"),
			new Operation("Appointment", "cancel", true, false, "cancel"),
			new Operation("Appointment", "reschedule", true, false, "reschedule"));

	private static final List<Pattern> PATHS = ALL.stream().map(Operation::path).toList();

	private FanoniOperations() {}

	/**
	 * The operation {@code theMethod} {@code thePath} (a decoded path below the FHIR base, e.g.
	 * {@code Appointment/a1/$cancel}) invokes, or {@code null} when it is none of them (or the method
	 * is not allowed for it).
	 */
	static Operation match(String theMethod, String thePath) {
		boolean get = "GET".equals(theMethod);
		if (!get && !"POST".equals(theMethod)) {
			return null;
		}
		for (int i = 0; i < ALL.size(); i++) {
			Operation operation = ALL.get(i);
			if ((!get || operation.acceptsGet()) && PATHS.get(i).matcher(thePath).matches()) {
				return operation;
			}
		}
		return null;
	}

	/**
	 * Adds each operation to {@code theCapabilityStatement}'s server {@code rest} entry, under its
	 * resource type (added when the statement does not list that type), as {@code name} and
	 * {@code definition}. An operation listed already with the same name and definition is not added
	 * again. Works on the R4 (and R4B/R5) structure, where {@code definition} is a canonical.
	 */
	static void addTo(FhirContext theContext, IBaseConformance theCapabilityStatement) {
		FhirTerser terser = theContext.newTerser();
		IBase rest = serverRest(terser, theCapabilityStatement);
		for (Operation operation : ALL) {
			IBase resource = resourceEntry(terser, rest, operation.resourceType());
			boolean listed = terser.getValues(resource, "operation").stream()
					.anyMatch(existing -> operation.name().equals(terser.getSinglePrimitiveValueOrNull(existing, "name"))
							&& operation.definitionUrl().equals(terser.getSinglePrimitiveValueOrNull(existing, "definition")));
			if (!listed) {
				IBase entry = terser.addElement(resource, "operation");
				terser.addElement(entry, "name", operation.name());
				terser.addElement(entry, "definition", operation.definitionUrl());
			}
		}
	}

	private static IBase serverRest(FhirTerser theTerser, IBaseConformance theStatement) {
		for (IBase rest : theTerser.getValues(theStatement, "rest")) {
			if (Objects.equals("server", theTerser.getSinglePrimitiveValueOrNull(rest, "mode"))) {
				return rest;
			}
		}
		IBase rest = theTerser.addElement(theStatement, "rest");
		theTerser.addElement(rest, "mode", "server");
		return rest;
	}

	private static IBase resourceEntry(FhirTerser theTerser, IBase theRest, String theType) {
		for (IBase resource : theTerser.getValues(theRest, "resource")) {
			if (theType.equals(theTerser.getSinglePrimitiveValueOrNull(resource, "type"))) {
				return resource;
			}
		}
		IBase resource = theTerser.addElement(theRest, "resource");
		theTerser.addElement(resource, "type", theType);
		return resource;
	}
}
