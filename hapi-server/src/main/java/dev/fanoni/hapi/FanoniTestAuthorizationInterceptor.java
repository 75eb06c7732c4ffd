package dev.fanoni.hapi;

import ca.uhn.fhir.rest.api.Constants;
import ca.uhn.fhir.rest.api.server.RequestDetails;
import ca.uhn.fhir.rest.server.exceptions.AuthenticationException;
import ca.uhn.fhir.rest.server.interceptor.auth.AuthorizationInterceptor;
import ca.uhn.fhir.rest.server.interceptor.auth.IAuthRule;
import ca.uhn.fhir.rest.server.interceptor.auth.IAuthRuleBuilder;
import ca.uhn.fhir.rest.server.interceptor.auth.PolicyEnum;
import ca.uhn.fhir.rest.server.interceptor.auth.RuleBuilder;
import java.util.List;
import java.util.Locale;
import java.util.regex.Pattern;
import org.hl7.fhir.r4.model.IdType;

/**
 * HAPI's {@link AuthorizationInterceptor} with fixed bearer tokens, for tests of Fanoni's trust model
 * (SPEC §5.1) against this server. TEST SERVER ONLY: the tokens are constants anybody can send.
 * Registered when {@code hapi.fanoni_test_authorization=true}.
 *
 * <ul>
 *   <li>no {@code Authorization} header: everything is allowed (the rest of the test suite talks to
 *       this server anonymously);
 *   <li>{@code Bearer test-sidecar}, {@code Bearer test-front-desk}: everything is allowed (the Fanoni
 *       guard still applies: only the service key makes a request the sidecar's);
 *   <li>{@code Bearer test-patient.<id>}: a patient app for {@code Patient/<id>}: may read Schedule,
 *       HealthcareService, Practitioner, PractitionerRole, Location, Organization, Device,
 *       OperationDefinition, SearchParameter and the CapabilityStatement, and its own compartment's
 *       {@code Patient/<id>} and Appointments; nothing else (no writes, no Slot, no Basic, no other
 *       patient): 403;
 *   <li>{@code Bearer test-directory}: a directory app (who works where): may read the public types
 *       above except Schedule, so it may not learn anyone's availability; nothing else: 403;
 *   <li>any other {@code Authorization} value: 401.
 * </ul>
 */
public class FanoniTestAuthorizationInterceptor extends AuthorizationInterceptor {

	public static final String SIDECAR_TOKEN = "test-sidecar";
	public static final String FRONT_DESK_TOKEN = "test-front-desk";
	public static final String PATIENT_TOKEN_PREFIX = "test-patient.";
	public static final String DIRECTORY_TOKEN = "test-directory";

	/** What a patient app may read without restriction: what $find needs to show and book. */
	static final List<String> PUBLIC_TYPES = List.of(
			"Schedule",
			"HealthcareService",
			"Practitioner",
			"PractitionerRole",
			"Location",
			"Organization",
			"Device",
			"OperationDefinition",
			"SearchParameter");

	private static final Pattern FHIR_ID = Pattern.compile("[A-Za-z0-9\\-.]{1,64}");

	public FanoniTestAuthorizationInterceptor() {
		super(PolicyEnum.DENY);
	}

	@Override
	public List<IAuthRule> buildRuleList(RequestDetails theRequestDetails) {
		String authorization = theRequestDetails.getHeader(Constants.HEADER_AUTHORIZATION);
		if (authorization == null) {
			return new RuleBuilder().allowAll("anonymous (test server)").build();
		}
		String token = bearerToken(authorization);
		if (SIDECAR_TOKEN.equals(token) || FRONT_DESK_TOKEN.equals(token)) {
			return new RuleBuilder().allowAll(token).build();
		}
		if (DIRECTORY_TOKEN.equals(token)) {
			return directoryRules();
		}
		if (token != null && token.startsWith(PATIENT_TOKEN_PREFIX)) {
			String patientId = token.substring(PATIENT_TOKEN_PREFIX.length());
			if (FHIR_ID.matcher(patientId).matches()) {
				return patientRules(new IdType("Patient", patientId));
			}
		}
		throw new AuthenticationException("Unknown bearer token (test server: see hapi-server/README.md)");
	}

	private static List<IAuthRule> patientRules(IdType thePatient) {
		IAuthRuleBuilder rules = new RuleBuilder();
		rules.allow("metadata").metadata();
		for (String type : PUBLIC_TYPES) {
			rules.allow("read " + type).read().resourcesOfType(type).withAnyId();
		}
		rules.allow("own Patient").read().resourcesOfType("Patient").inCompartment("Patient", thePatient);
		rules.allow("own Appointments").read().resourcesOfType("Appointment").inCompartment("Patient", thePatient);
		rules.denyAll("patient app: nothing else");
		return rules.build();
	}

	private static List<IAuthRule> directoryRules() {
		IAuthRuleBuilder rules = new RuleBuilder();
		rules.allow("metadata").metadata();
		for (String type : PUBLIC_TYPES) {
			if (!type.equals("Schedule")) {
				rules.allow("read " + type).read().resourcesOfType(type).withAnyId();
			}
		}
		rules.denyAll("directory app: nothing else");
		return rules.build();
	}

	/** The token of a {@code Bearer} header (scheme case-insensitive), or {@code null}. */
	static String bearerToken(String theAuthorization) {
		String value = theAuthorization.trim();
		if (value.length() > 7 && value.substring(0, 7).toLowerCase(Locale.ROOT).equals("bearer ")) {
			String token = value.substring(7).trim();
			return token.isEmpty() ? null : token;
		}
		return null;
	}
}
