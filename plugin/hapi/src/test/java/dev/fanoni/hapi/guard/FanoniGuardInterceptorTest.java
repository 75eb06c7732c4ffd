package dev.fanoni.hapi.guard;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.rest.server.exceptions.ForbiddenOperationException;
import dev.fanoni.hapi.guard.FanoniGuardInterceptor.Refusal;
import dev.fanoni.hapi.guard.FanoniGuardInterceptor.Rule;
import org.hl7.fhir.instance.model.api.IBaseResource;
import org.hl7.fhir.r4.model.Appointment;
import org.hl7.fhir.r4.model.Basic;
import org.hl7.fhir.r4.model.OperationOutcome;
import org.hl7.fhir.r4.model.Patient;
import org.hl7.fhir.r4.model.Slot;
import org.junit.jupiter.api.Test;

class FanoniGuardInterceptorTest {

	private static final FhirContext CTX = FhirContext.forR4Cached();
	private static final String KEY = "k3y-of-the-sidecar";

	private final FanoniGuardInterceptor myGuard = new FanoniGuardInterceptor(KEY);

	private Refusal create(IBaseResource theNew, String theHeader) {
		return myGuard.check(CTX, "create", null, theNew, theHeader);
	}

	private Refusal update(IBaseResource theOld, IBaseResource theNew, String theHeader) {
		return myGuard.check(CTX, "update", theOld, theNew, theHeader);
	}

	private Refusal delete(IBaseResource theOld, String theHeader) {
		return myGuard.check(CTX, "delete", theOld, null, theHeader);
	}

	private static Slot slot(String theId, Slot.SlotStatus theStatus) {
		Slot slot = new Slot();
		slot.setId(theId);
		slot.setStatus(theStatus);
		return slot;
	}

	private static Appointment appointment(String theId, Appointment.AppointmentStatus theStatus) {
		Appointment appointment = new Appointment();
		appointment.setId(theId);
		appointment.setStatus(theStatus);
		return appointment;
	}

	private static Appointment held(String theId, Appointment.AppointmentStatus theStatus) {
		Appointment appointment = appointment(theId, theStatus);
		appointment.getMeta().addTag(FanoniGuardInterceptor.BOOKING_REQUEST_SYSTEM, "req-1", null);
		appointment.getMeta().addTag(FanoniGuardInterceptor.FANONI_SYSTEM, FanoniGuardInterceptor.HOLD_TAG, null);
		return appointment;
	}

	@Test
	void busySlotsAreRefusedToEveryoneButTheSidecar() {
		for (Slot.SlotStatus status : new Slot.SlotStatus[] {Slot.SlotStatus.BUSY, Slot.SlotStatus.BUSYTENTATIVE}) {
			Slot busy = slot("s1", status);
			assertEquals(Rule.BUSY_SLOT, create(busy, null).rule());
			assertEquals(Rule.BUSY_SLOT, create(busy, "wrong").rule());
			assertEquals(Rule.BUSY_SLOT, delete(busy, null).rule());
			assertNull(create(busy, KEY));
			assertNull(delete(busy, KEY));
		}
	}

	@Test
	void aSlotThatWasOrBecomesBusyIsGuarded() {
		Slot free = slot("s1", Slot.SlotStatus.FREE);
		Slot busy = slot("s1", Slot.SlotStatus.BUSY);
		Refusal freeing = update(busy, free, null);
		assertEquals(Rule.BUSY_SLOT, freeing.rule());
		assertEquals("Slot/s1", freeing.target());
		assertEquals("Slot.status", freeing.expression());
		assertTrue(freeing.diagnostics().contains("POST [base]/Appointment/$book"), freeing.diagnostics());
		assertEquals(Rule.BUSY_SLOT, update(free, busy, null).rule());
		assertNull(update(busy, free, KEY));
	}

	@Test
	void blocksAndExtraAvailabilityStayWritable() {
		Slot block = slot("b1", Slot.SlotStatus.BUSYUNAVAILABLE);
		Slot free = slot("f1", Slot.SlotStatus.FREE);
		assertNull(create(block, null));
		assertNull(create(free, null));
		assertNull(update(block, slot("b1", Slot.SlotStatus.FREE), null));
		assertNull(delete(block, null));
		assertNull(delete(free, "wrong"));
		assertNull(create(new Slot(), null));
	}

	@Test
	void locksAreGuardedByIdAndByCode() {
		Basic byId = new Basic();
		byId.setId("fanoni-lock-schedule-1");
		Basic byCode = new Basic();
		byCode.getCode().addCoding().setSystem(FanoniGuardInterceptor.FANONI_SYSTEM).setCode("schedule-lock");
		Basic other = new Basic();
		other.setId("note-1");
		other.getCode().addCoding().setSystem("http://example.org").setCode("schedule-lock");

		Refusal refusal = create(byId, null);
		assertEquals(Rule.LOCK, refusal.rule());
		assertEquals("Basic", refusal.expression());
		assertEquals("Basic/fanoni-lock-schedule-1", refusal.target());
		assertEquals(Rule.LOCK, create(byCode, null).rule());
		assertEquals(Rule.LOCK, delete(byId, null).rule());
		Basic bucket = new Basic();
		bucket.setId("fanoni-lock-schedule-1.b942000");
		assertEquals(Rule.LOCK, create(bucket, null).rule());
		Basic bucketByCode = new Basic();
		bucketByCode.getCode().addCoding().setSystem(FanoniGuardInterceptor.FANONI_SYSTEM).setCode("schedule-time-lock");
		assertEquals(Rule.LOCK, create(bucketByCode, null).rule());
		// Turning a lock into something else, or something else into a lock, is guarded too.
		Basic wasLock = byCode.copy();
		wasLock.setId("x");
		Basic notLock = new Basic();
		notLock.setId("x");
		assertEquals(Rule.LOCK, update(wasLock, notLock, null).rule());
		assertEquals(Rule.LOCK, update(notLock, wasLock, null).rule());
		assertNull(create(other, null));
		assertNull(create(byId, KEY));
		assertNull(update(wasLock, notLock, KEY));
	}

	@Test
	void introducingABookingTagIsRefused() {
		Appointment plain = appointment("a1", Appointment.AppointmentStatus.BOOKED);
		Appointment marked = plain.copy();
		marked.getMeta().addTag(FanoniGuardInterceptor.BOOKING_REQUEST_SYSTEM, "req-1", null);
		Refusal refusal = create(marked, null);
		assertEquals(Rule.BOOKING_TAG, refusal.rule());
		assertEquals("Appointment.meta.tag", refusal.expression());
		assertEquals(Rule.BOOKING_TAG, update(plain, marked, null).rule());
		// Another code than the stored one counts as introducing one.
		Appointment other = plain.copy();
		other.getMeta().addTag(FanoniGuardInterceptor.BOOKING_REQUEST_SYSTEM, "req-2", null);
		assertEquals(Rule.BOOKING_TAG, update(marked, other, null).rule());
		// On a Slot too (a free one: busy Slots are refused by the first rule anyway).
		Slot slot = slot("s1", Slot.SlotStatus.FREE);
		slot.getMeta().addTag(FanoniGuardInterceptor.BOOKING_REQUEST_SYSTEM, "req-1", null);
		assertEquals("Slot.meta.tag", create(slot, null).expression());
		assertNull(create(marked, KEY));
		// Other tag systems, and identifiers of any system, are anybody's.
		Appointment ehr = plain.copy();
		ehr.getMeta().addTag("urn:ehr", "imported", null);
		ehr.addIdentifier().setSystem(FanoniGuardInterceptor.BOOKING_REQUEST_SYSTEM).setValue("123");
		assertNull(create(ehr, null));
	}

	@Test
	void introducingTheHoldTagIsRefused() {
		Appointment plain = appointment("a1", Appointment.AppointmentStatus.PENDING);
		Appointment tagged = plain.copy();
		tagged.getMeta().addTag(FanoniGuardInterceptor.FANONI_SYSTEM, FanoniGuardInterceptor.HOLD_TAG, null);
		Refusal refusal = create(tagged, null);
		assertEquals(Rule.HOLD_TAG, refusal.rule());
		assertEquals("Appointment.meta.tag", refusal.expression());
		assertEquals(Rule.HOLD_TAG, update(plain, tagged, null).rule());
		assertNull(update(plain, tagged, KEY));
		Appointment otherTag = plain.copy();
		otherTag.getMeta().addTag("http://example.org/tags", "hold", null);
		assertNull(create(otherTag, null));
	}

	@Test
	void updatesThatKeepTheMarkersAreAllowed() {
		// An EHR cancels a held Appointment with a plain PUT of what it read.
		Appointment stored = held("a1", Appointment.AppointmentStatus.PENDING);
		Appointment cancelled = held("a1", Appointment.AppointmentStatus.CANCELLED);
		assertNull(update(stored, cancelled, null));
		// ... or drops the markers (HAPI keeps tags anyway): nothing is introduced.
		assertNull(update(stored, appointment("a1", Appointment.AppointmentStatus.CANCELLED), null));
		// Deleting an Appointment is not guarded.
		assertNull(delete(stored, null));
	}

	@Test
	void otherResourcesAreNotGuarded() {
		Patient patient = new Patient();
		patient.getMeta().addTag(FanoniGuardInterceptor.FANONI_SYSTEM, FanoniGuardInterceptor.HOLD_TAG, null);
		patient.getMeta().addTag(FanoniGuardInterceptor.BOOKING_REQUEST_SYSTEM, "x", null);
		assertNull(create(patient, null));
	}

	@Test
	void withoutAKeyTheGuardFailsClosed() {
		FanoniGuardInterceptor unconfigured = new FanoniGuardInterceptor("  ");
		assertFalse(unconfigured.hasServiceKey());
		assertFalse(unconfigured.isSidecar(""));
		assertFalse(unconfigured.isSidecar("  "));
		assertEquals(
				Rule.BUSY_SLOT,
				unconfigured.check(CTX, "create", null, slot("s", Slot.SlotStatus.BUSY), "").rule());
		assertNull(unconfigured.check(CTX, "create", null, slot("s", Slot.SlotStatus.FREE), null));
	}

	@Test
	void theKeyMustMatchExactly() {
		assertTrue(myGuard.isSidecar(KEY));
		assertFalse(myGuard.isSidecar(KEY + "x"));
		assertFalse(myGuard.isSidecar(KEY.substring(1)));
		assertFalse(myGuard.isSidecar(KEY.toUpperCase()));
		assertFalse(myGuard.isSidecar(null));
		assertTrue(FanoniGuardInterceptor.withServiceKey(KEY).isSidecar(KEY));
	}

	@Test
	void theRefusalIsA403WithAnOperationOutcome() {
		Refusal refusal = create(slot("s1", Slot.SlotStatus.BUSY), null);
		ForbiddenOperationException e = FanoniGuardInterceptor.forbidden(CTX, refusal);
		assertEquals(403, e.getStatusCode());
		OperationOutcome outcome = (OperationOutcome) e.getOperationOutcome();
		assertNotNull(outcome);
		assertEquals(1, outcome.getIssue().size());
		OperationOutcome.OperationOutcomeIssueComponent issue = outcome.getIssueFirstRep();
		assertEquals(OperationOutcome.IssueSeverity.ERROR, issue.getSeverity());
		assertEquals(OperationOutcome.IssueType.FORBIDDEN, issue.getCode());
		assertEquals(refusal.diagnostics(), issue.getDiagnostics());
		assertTrue(issue.getDiagnostics().startsWith("Refused to create Slot/s1: Slots that take time"));
		assertEquals("Slot.status", issue.getExpression().get(0).getValue());
	}
}
