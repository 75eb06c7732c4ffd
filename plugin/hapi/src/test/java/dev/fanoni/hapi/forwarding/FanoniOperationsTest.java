package dev.fanoni.hapi.forwarding;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import ca.uhn.fhir.context.FhirContext;
import dev.fanoni.hapi.forwarding.FanoniOperations.Operation;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.stream.Collectors;
import java.util.stream.Stream;
import org.hl7.fhir.r4.model.CapabilityStatement;
import org.hl7.fhir.r4.model.CapabilityStatement.CapabilityStatementRestComponent;
import org.hl7.fhir.r4.model.CapabilityStatement.CapabilityStatementRestResourceComponent;
import org.hl7.fhir.r4.model.CapabilityStatement.CapabilityStatementRestResourceOperationComponent;
import org.hl7.fhir.r4.model.CapabilityStatement.RestfulCapabilityMode;
import org.hl7.fhir.r4.model.OperationDefinition;
import org.junit.jupiter.api.Test;

class FanoniOperationsTest {

	private static final FhirContext CTX = FhirContext.forR4Cached();

	/** The sidecar's definitions, beside this module: plugin/resources/ (Maven runs in plugin/hapi). */
	private static final Path RESOURCES = Path.of(System.getProperty("basedir", ".")).resolve("../resources");

	/**
	 * The sidecar's definitions of operations on a resource type. System-level ones
	 * ({@code [base]/$bulk-publish}) are not forwarded: they are public and routed to the sidecar
	 * itself (README, "What is forwarded").
	 */
	private static List<OperationDefinition> shippedDefinitions() throws IOException {
		try (Stream<Path> files = Files.list(RESOURCES)) {
			return files.filter(f -> f.getFileName().toString().startsWith("OperationDefinition-"))
					.sorted()
					.map(FanoniOperationsTest::parse)
					.filter(definition -> !definition.getSystem())
					.toList();
		}
	}

	private static OperationDefinition parse(Path theFile) {
		try {
			return CTX.newJsonParser().parseResource(OperationDefinition.class, Files.readString(theFile, StandardCharsets.UTF_8));
		} catch (IOException e) {
			throw new IllegalStateException(e);
		}
	}

	@Test
	void everyShippedDefinitionIsForwardedAndListedAsItIsDefined() throws IOException {
		List<OperationDefinition> definitions = shippedDefinitions();
		assertTrue(definitions.size() >= 6, "found " + definitions.size() + " in " + RESOURCES.toAbsolutePath());
		Map<String, Operation> byUrl =
				FanoniOperations.ALL.stream().collect(Collectors.toMap(Operation::definitionUrl, o -> o));
		for (OperationDefinition definition : definitions) {
			Operation operation = byUrl.get(definition.getUrl());
			assertNotNull(operation, definition.getUrl() + " is missing from FanoniOperations.ALL");
			assertEquals(definition.getCode(), operation.name(), definition.getUrl());
			assertEquals(definition.getIdElement().getIdPart(), operation.definitionId(), definition.getUrl());
			assertEquals(1, definition.getResource().size(), definition.getUrl());
			assertEquals(definition.getResource().get(0).getValue(), operation.resourceType(), definition.getUrl());
			assertEquals(definition.getInstance(), operation.instance(), definition.getUrl());
			assertEquals(!definition.getType(), operation.instance(), definition.getUrl());
			// FHIR: an operation that changes state is invoked with POST only.
			assertEquals(!definition.getAffectsState(), operation.acceptsGet(), definition.getUrl());
		}
	}

	@Test
	void everyOperationHasAUniquePathAndDefinition() {
		assertEquals(FanoniOperations.ALL.size(), FanoniOperations.ALL.stream().map(Operation::definitionUrl).distinct().count());
		for (Operation operation : FanoniOperations.ALL) {
			assertTrue(operation.definitionUrl().startsWith(FanoniOperations.DEFINITION_BASE));
			String path = operation.resourceType() + (operation.instance() ? "/x1" : "") + "/$" + operation.name();
			assertEquals(operation, FanoniOperations.match("POST", path), path);
		}
	}

	@Test
	void matchesTheMethodsAndLevels() {
		assertEquals("find", FanoniOperations.match("GET", "Appointment/$find").definitionId());
		assertEquals("schedule-find", FanoniOperations.match("GET", "Schedule/dr-alice/$find").definitionId());
		assertEquals("reschedule", FanoniOperations.match("POST", "Appointment/a.1/$reschedule").definitionId());
		assertNull(FanoniOperations.match("GET", "Appointment/a1/$reschedule"), "changes state: POST only");
		assertNull(FanoniOperations.match("GET", "Appointment/$book"));
		assertNull(FanoniOperations.match("PUT", "Appointment/$find"));
		assertNull(FanoniOperations.match("POST", "Appointment/$reschedule"), "instance level only");
		assertNull(FanoniOperations.match("POST", "Appointment/a1/$find"), "type level only");
		assertNull(FanoniOperations.match("POST", "Schedule/$find"));
		assertNull(FanoniOperations.match("POST", "Appointment/a_1/$cancel"), "not a FHIR id");
		assertNull(FanoniOperations.match("POST", "Appointment/" + "a".repeat(65) + "/$cancel"));
		assertNull(FanoniOperations.match("POST", "Appointment/$finder"));
		assertNull(FanoniOperations.match("POST", "Patient/$find"));
	}

	private static CapabilityStatement hapiLike() {
		CapabilityStatement statement = new CapabilityStatement();
		CapabilityStatementRestComponent rest = statement.addRest().setMode(RestfulCapabilityMode.SERVER);
		CapabilityStatementRestResourceComponent appointment = rest.addResource().setType("Appointment");
		appointment.addOperation().setName("meta").setDefinition("http://hapi/fhir/OperationDefinition/Appointment-t-meta");
		rest.addResource().setType("Patient");
		return statement;
	}

	private static Map<String, List<String>> operations(CapabilityStatement theStatement) {
		return theStatement.getRestFirstRep().getResource().stream()
				.collect(Collectors.toMap(
						CapabilityStatementRestResourceComponent::getType,
						r -> r.getOperation().stream()
								.map(o -> o.getName() + " " + o.getDefinition())
								.toList()));
	}

	@Test
	void theCapabilityStatementListsEachOperationUnderItsResource() {
		CapabilityStatement statement = hapiLike();
		FanoniOperations.addTo(CTX, statement);
		String base = FanoniOperations.DEFINITION_BASE;
		Map<String, List<String>> listed = operations(statement);
		assertEquals(
				List.of(
						"meta http://hapi/fhir/OperationDefinition/Appointment-t-meta",
						"find " + base + "find",
						"hold " + base + "hold",
						"book " + base + "book",
						"confirm " + base + "confirm",
						"cancel " + base + "cancel",
						"reschedule " + base + "reschedule"),
				listed.get("Appointment"));
		// HAPI's statement had no Schedule entry: one is added for Schedule/<id>/$find.
		assertEquals(List.of("find " + base + "schedule-find"), listed.get("Schedule"));
		assertEquals(List.of(), listed.get("Patient"));
		assertEquals(1, statement.getRest().size());

		// Again (HAPI rebuilds the statement when its cache expires; a statement reused must not grow).
		FanoniOperations.addTo(CTX, statement);
		assertEquals(listed, operations(statement));
		String json = CTX.newJsonParser().encodeResourceToString(statement);
		assertTrue(json.contains("\"definition\":\"" + base + "schedule-find\""), json);
	}

	@Test
	void aStatementWithoutAServerEntryGetsOne() {
		CapabilityStatement statement = new CapabilityStatement();
		statement.addRest().setMode(RestfulCapabilityMode.CLIENT);
		FanoniOperations.addTo(CTX, statement);
		assertEquals(2, statement.getRest().size());
		CapabilityStatementRestComponent server = statement.getRest().get(1);
		assertEquals(RestfulCapabilityMode.SERVER, server.getMode());
		List<CapabilityStatementRestResourceOperationComponent> onAppointment = server.getResource().stream()
				.filter(r -> r.getType().equals("Appointment"))
				.findFirst()
				.orElseThrow()
				.getOperation();
		assertEquals(6, onAppointment.size());
		assertFalse(statement.getRest().get(0).hasResource());
	}
}
