package dev.fanoni.hapi.forwarding;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.interceptor.api.HookParams;
import ca.uhn.fhir.interceptor.api.Pointcut;
import ca.uhn.fhir.interceptor.executor.InterceptorService;
import ca.uhn.fhir.rest.api.server.RequestDetails;
import ca.uhn.fhir.rest.api.server.SystemRequestDetails;
import ca.uhn.fhir.rest.server.servlet.ServletRequestDetails;
import java.util.List;
import org.hl7.fhir.instance.model.api.IBaseConformance;
import org.hl7.fhir.r4.model.CapabilityStatement;
import org.hl7.fhir.r4.model.CapabilityStatement.CapabilityStatementRestResourceComponent;
import org.hl7.fhir.r4.model.CapabilityStatement.RestfulCapabilityMode;
import org.junit.jupiter.api.Test;

class FanoniForwardingInterceptorTest {

	private static final FhirContext CTX = FhirContext.forR4Cached();

	@Test
	void forwardsExactlyTheSchedulingOperations() {
		assertEquals("Appointment/$find", FanoniForwardingInterceptor.operationPath("GET", "Appointment/$find"));
		assertEquals("Appointment/$find", FanoniForwardingInterceptor.operationPath("POST", "Appointment/%24find"));
		assertEquals("Schedule/s1/$find", FanoniForwardingInterceptor.operationPath("GET", "Schedule/s1/$find"));
		assertEquals("Appointment/$book", FanoniForwardingInterceptor.operationPath("POST", "Appointment/$book"));
		assertEquals("Appointment/$hold", FanoniForwardingInterceptor.operationPath("POST", "Appointment/$hold"));
		assertEquals("Appointment/a1/$confirm", FanoniForwardingInterceptor.operationPath("POST", "Appointment/a1/$confirm"));
		assertEquals("Appointment/a1/$cancel", FanoniForwardingInterceptor.operationPath("POST", "Appointment/a1/$cancel"));
		assertEquals(
				"Appointment/a1/$reschedule",
				FanoniForwardingInterceptor.operationPath("POST", "Appointment/a1/%24reschedule"));

		assertNull(FanoniForwardingInterceptor.operationPath("GET", "Appointment/a1/$reschedule"));
		assertNull(FanoniForwardingInterceptor.operationPath("GET", "Appointment/$book"));
		assertNull(FanoniForwardingInterceptor.operationPath("DELETE", "Appointment/a1/$cancel"));
		assertNull(FanoniForwardingInterceptor.operationPath("GET", "Appointment"));
		assertNull(FanoniForwardingInterceptor.operationPath("GET", "Appointment/a1"));
		assertNull(FanoniForwardingInterceptor.operationPath("POST", "Appointment/$validate"));
		assertNull(FanoniForwardingInterceptor.operationPath("GET", "Appointment/%2"), "malformed escape");
		assertNull(FanoniForwardingInterceptor.operationPath("GET", null));
	}

	private static CapabilityStatement statement() {
		CapabilityStatement statement = new CapabilityStatement();
		statement.addRest().setMode(RestfulCapabilityMode.SERVER).addResource().setType("Appointment");
		return statement;
	}

	/** The hook called the way HAPI's ConformanceMethodBinding calls it. */
	private static CapabilityStatement generated(FanoniForwardingInterceptor theInterceptor) {
		InterceptorService interceptors = new InterceptorService();
		interceptors.registerInterceptor(theInterceptor);
		SystemRequestDetails request = new SystemRequestDetails();
		request.setFhirContext(CTX);
		CapabilityStatement statement = statement();
		HookParams params = new HookParams()
				.add(IBaseConformance.class, statement)
				.add(RequestDetails.class, request)
				.add(ServletRequestDetails.class, null);
		Object replaced = interceptors.callHooksAndReturnObject(Pointcut.SERVER_CAPABILITY_STATEMENT_GENERATED, params);
		assertNull(replaced, "the statement is changed in place, not replaced");
		return statement;
	}

	private static List<String> appointmentOperations(CapabilityStatement theStatement) {
		CapabilityStatementRestResourceComponent appointment = theStatement.getRestFirstRep().getResource().stream()
				.filter(r -> r.getType().equals("Appointment"))
				.findFirst()
				.orElseThrow();
		return appointment.getOperation().stream().map(o -> o.getName()).toList();
	}

	@Test
	void addsTheOperationsToHapisCapabilityStatement() {
		CapabilityStatement statement = generated(new FanoniForwardingInterceptor("http://sidecar:8090/fhir"));
		assertEquals(List.of("find", "hold", "book", "confirm", "cancel", "reschedule"), appointmentOperations(statement));
		assertTrue(statement.getRestFirstRep().getResource().stream().anyMatch(r -> r.getType().equals("Schedule")));
	}

	@Test
	void aDisabledInterceptorListsNothing() {
		FanoniForwardingInterceptor disabled = new FanoniForwardingInterceptor("", java.time.Duration.ofSeconds(1), java.time.Duration.ofSeconds(1));
		assertFalse(disabled.isEnabled());
		assertEquals(List.of(), appointmentOperations(generated(disabled)));
	}

	@Test
	void aLocationOnTheSidecarsBaseMovesOntoHapis() {
		FanoniForwardingInterceptor interceptor = new FanoniForwardingInterceptor("http://sidecar:8090/fhir/");
		assertEquals("http://sidecar:8090/fhir", interceptor.getSidecarBaseUrl());
		assertEquals(
				"http://hapi:8080/fhir/Appointment/a1",
				interceptor.onHapiBase("http://sidecar:8090/fhir/Appointment/a1", "http://hapi:8080/fhir/"));
		assertEquals(
				"http://elsewhere/Appointment/a1",
				interceptor.onHapiBase("http://elsewhere/Appointment/a1", "http://hapi:8080/fhir"));
	}

	@Test
	void aSidecarUrlMustBeAnAbsoluteHttpBase() {
		assertThrows(IllegalArgumentException.class, () -> new FanoniForwardingInterceptor("ftp://sidecar/fhir"));
		assertThrows(IllegalArgumentException.class, () -> new FanoniForwardingInterceptor("sidecar:8090/fhir"));
		assertThrows(IllegalArgumentException.class, () -> new FanoniForwardingInterceptor("http://sidecar/fhir?x=1"));
		assertTrue(FanoniForwardingInterceptor.forSidecar(" ").isEmpty());
	}

	@Test
	void queryCharactersTheUriClassRefusesAreEncoded() {
		assertEquals(
				"identifier=http://x%7Cy&name=a%20b&ok=%2B",
				FanoniForwardingInterceptor.encodeQuery("identifier=http://x|y&name=a b&ok=%2B"));
	}
}
