//! Appointment states over gRPC, session changes, and clinic wall-clock time across clock changes.

use chrono::{NaiveDate, TimeZone, Utc};
use pac_e2e::scheduling::Platform;
use pac_platform::convert::date;
use pac_platform::testkit::assert_error;
use pac_proto::scheduling as pb;
use pac_proto::scheduling::AppointmentStatus as S;
use tonic::Code;

async fn set_status(p: &Platform, id: &str, status: S, reason: &str) -> Result<pb::Appointment, tonic::Status> {
    p.client()
        .update_appointment_status(pb::UpdateAppointmentStatusRequest {
            appointment_id: id.into(),
            status: status as i32,
            etag: String::new(),
            correction_reason: reason.into(),
        })
        .await
        .map(|r| r.into_inner().appointment.unwrap())
}

/// An appointment brought to `status` through legal moves (start moved into the past first).
async fn appointment_in(p: &Platform, slot: &pb::Slot, patient: &str, status: S) -> pb::Appointment {
    if status == S::Pending {
        return p.hold(&slot.id, patient, 0).await;
    }
    let booked = p.book(&slot.id, patient).await.unwrap();
    p.make_started(&booked.id).await;
    match status {
        S::Booked => p.get(&booked.id).await,
        S::Cancelled => p
            .client()
            .cancel_appointment(pb::CancelAppointmentRequest {
                appointment_id: booked.id.clone(),
                reason_code: "CLINICIAN_UNAVAILABLE".into(),
                cancelled_by: pb::CancelledBy::Provider as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .appointment
            .unwrap(),
        S::Arrived | S::CheckedIn | S::Fulfilled | S::Noshow | S::EnteredInError => set_status(p, &booked.id, status, "").await.unwrap(),
        other => panic!("not reachable here: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_settable_move_follows_the_table() {
    let p = Platform::start().await;
    let clinic = p.clinic("TO-FRACTURE").await;
    p.session(&clinic, 8, 18, 5, 1).await;
    let slots = p.free_slots(&clinic).await;
    let patients = p.patients(40).await;
    let mut patient = patients.iter();
    let froms = [S::Pending, S::Booked, S::Arrived, S::CheckedIn, S::Fulfilled, S::Cancelled, S::Noshow, S::EnteredInError];
    let targets = [S::Arrived, S::CheckedIn, S::Fulfilled, S::Noshow, S::EnteredInError];
    // (from, to) allowed without a correction reason, from DOMAIN.md's table.
    let allowed = |from: S, to: S| match from {
        S::Pending => to == S::EnteredInError,
        S::Booked => true,
        S::Arrived | S::CheckedIn => matches!(to, S::CheckedIn | S::Fulfilled | S::EnteredInError),
        _ => false,
    };
    // Corrections of finished appointments, with a reason.
    let correctable = |from: S, to: S| {
        matches!((from, to), (S::Noshow, S::Fulfilled) | (S::Fulfilled, S::Noshow))
            || (to == S::EnteredInError && matches!(from, S::Fulfilled | S::Cancelled | S::Noshow))
    };
    let mut slot = slots.iter();
    for from in froms {
        for to in targets {
            let appointment = appointment_in(&p, slot.next().unwrap(), patient.next().unwrap(), from).await;
            assert_eq!(appointment.status, from as i32);
            let plain = set_status(&p, &appointment.id, to, "").await;
            if allowed(from, to) {
                let changed = plain.unwrap_or_else(|e| panic!("{from:?} -> {to:?}: {e:?}"));
                assert_eq!(changed.status, to as i32);
                continue;
            }
            let refused = plain.expect_err(&format!("{from:?} -> {to:?} must be refused"));
            assert_error(&refused, Code::FailedPrecondition, "INVALID_TRANSITION");
            assert_eq!(p.get(&appointment.id).await.status, from as i32, "a refused move changes nothing");
            let corrected = set_status(&p, &appointment.id, to, "marked in error at reception").await;
            assert_eq!(corrected.is_ok(), correctable(from, to), "{from:?} -> {to:?} with a reason: {corrected:?}");
        }
    }
    // Corrections are audited with their reason.
    let audited: i64 =
        sqlx::query_scalar("SELECT count(*) FROM scheduling.appointment_changes WHERE reason = 'marked in error at reception'")
            .fetch_one(&p.admin().await)
            .await
            .unwrap();
    assert!(audited > 0);
}

#[tokio::test]
async fn a_noshow_only_after_the_start_and_ending_frees_the_place() {
    let p = Platform::start().await;
    let clinic = p.clinic("TO-FRACTURE").await;
    p.session(&clinic, 9, 10, 30, 1).await;
    let slot = p.free_slots(&clinic).await.remove(0);
    let patients = p.patients(1).await;
    let booked = p.book(&slot.id, &patients[0]).await.unwrap();
    assert_error(&set_status(&p, &booked.id, S::Noshow, "").await.unwrap_err(), Code::FailedPrecondition, "INVALID_TRANSITION");
    let stale = p
        .client()
        .update_appointment_status(pb::UpdateAppointmentStatusRequest {
            appointment_id: booked.id.clone(),
            status: S::Arrived as i32,
            etag: "W/\"7\"".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_error(&stale, Code::Aborted, "VERSION_MISMATCH");
    let not_settable = set_status(&p, &booked.id, S::Booked, "").await.unwrap_err();
    assert_error(&not_settable, Code::InvalidArgument, "STATUS_NOT_SETTABLE");
    p.make_started(&booked.id).await;
    set_status(&p, &booked.id, S::Noshow, "").await.unwrap();
    assert_eq!(p.occupied(&slot.id).await, 0);
}

#[tokio::test]
async fn booking_a_slot_that_has_started_is_refused() {
    let p = Platform::start().await;
    let clinic = p.clinic("TO-FRACTURE").await;
    p.session(&clinic, 9, 10, 30, 1).await;
    let slot = p.free_slots(&clinic).await.remove(0);
    sqlx::query("UPDATE scheduling.slots SET start_time = now() - interval '1 minute' WHERE id = $1::uuid")
        .bind(&slot.id)
        .execute(&p.admin().await)
        .await
        .unwrap();
    let patients = p.patients(1).await;
    assert_error(&p.book(&slot.id, &patients[0]).await.unwrap_err(), Code::FailedPrecondition, "SLOT_UNAVAILABLE");
    assert_eq!(p.occupied(&slot.id).await, 0);
}

#[tokio::test]
async fn changing_a_session_regenerates_free_slots_and_keeps_booked_ones() {
    let p = Platform::start().await;
    let clinic = p.clinic("TO-FRACTURE").await;
    let template = p.session(&clinic, 9, 11, 30, 1).await;
    let before = p.free_slots(&clinic).await;
    let patients = p.patients(1).await;
    let booked = p.book(&before[1].id, &patients[0]).await.unwrap(); // 09:30 on the first day
    let changed = pb::SessionTemplate { slot_minutes: 20, capacity: 2, ..template.clone() };
    let response = p
        .client()
        .update_session_template(pb::UpdateSessionTemplateRequest { session_template: Some(changed), request_id: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.slots_kept, 1);
    assert!(response.slots_withdrawn > 0 && response.slots_created > 0, "{response:?}");
    assert_eq!(response.session_template.unwrap().slot_minutes, 20);
    // The booked slot and its appointment are untouched.
    let kept = p.get(&booked.id).await;
    assert_eq!((kept.slot_id.as_str(), kept.status), (before[1].id.as_str(), S::Booked as i32));
    let after = p.free_slots(&clinic).await;
    let first_day: Vec<_> = after.iter().filter(|s| s.local_date == before[0].local_date).collect();
    let starts: Vec<(i32, i32)> = first_day.iter().map(|s| s.local_start.map(|t| (t.hours, t.minutes)).unwrap()).collect();
    // 09:00, 09:20, 09:40, 10:00, 10:20, 10:40 in 20-minute slots for two patients each.
    assert_eq!(starts, [(9, 0), (9, 20), (9, 40), (10, 0), (10, 20), (10, 40)]);
    assert!(first_day.iter().all(|s| s.capacity == 2));
    // 10:30 is not in the new pattern: withdrawn. 09:00 is in both: the same slot, restored.
    assert!(after.iter().all(|s| s.id != before[3].id), "old free slots are withdrawn");
    assert_eq!(first_day[0].id, before[0].id);
}

#[tokio::test]
async fn slots_keep_local_wall_clock_time_across_the_2027_clock_changes() {
    let p = Platform::start_with(|c| c.policy.horizon_days = 400).await;
    let clinic = p.clinic("TO-FRACTURE").await;
    let mut client = p.client();
    client
        .create_session_template(pb::CreateSessionTemplateRequest {
            session_template: Some(pb::SessionTemplate {
                clinic_id: clinic.id.clone(),
                weekday: 7,
                start: Some(pb::LocalTime { hours: 9, minutes: 0 }),
                end: Some(pb::LocalTime { hours: 10, minutes: 0 }),
                slot_minutes: 60,
                capacity: 1,
                valid_from: Some(date(NaiveDate::from_ymd_opt(2027, 3, 1).unwrap())),
                valid_until: Some(date(NaiveDate::from_ymd_opt(2027, 11, 30).unwrap())),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap();
    let slot_on = |day: u32, month: u32| {
        let mut client = p.client();
        let clinic_id = clinic.id.clone();
        async move {
            let start = Utc.with_ymd_and_hms(2027, month, day, 0, 0, 0).unwrap();
            let slots = client
                .list_slots(pb::ListSlotsRequest {
                    clinic_id,
                    start_time: Some(pac_platform::convert::timestamp(start)),
                    end_time: Some(pac_platform::convert::timestamp(start + chrono::Duration::days(1))),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .slots;
            assert_eq!(slots.len(), 1, "one slot on 2027-{month}-{day}");
            let slot = slots.into_iter().next().unwrap();
            (slot.start_time.unwrap().seconds, slot.local_start.unwrap())
        }
    };
    let utc = |month, day, hour| Utc.with_ymd_and_hms(2027, month, day, hour, 0, 0).unwrap().timestamp();
    let nine = pb::LocalTime { hours: 9, minutes: 0 };
    // Before and after spring forward (Sunday 28 March), and after fall back (Sunday 31 October).
    assert_eq!(slot_on(21, 3).await, (utc(3, 21, 9), nine));
    assert_eq!(slot_on(28, 3).await, (utc(3, 28, 8), nine));
    assert_eq!(slot_on(24, 10).await, (utc(10, 24, 8), nine));
    assert_eq!(slot_on(31, 10).await, (utc(10, 31, 9), nine));
}

#[tokio::test]
async fn the_directory_and_lists_read_back_what_was_made() {
    let p = Platform::start().await;
    let clinic = p.clinic("TO-FRACTURE").await;
    let template = p.session(&clinic, 9, 10, 15, 1).await;
    let mut c = p.client();
    let read = c.get_clinic(pb::GetClinicRequest { id: clinic.id.clone() }).await.unwrap().into_inner();
    assert_eq!(read.clinic.unwrap(), clinic);
    let location = read.location.unwrap();
    assert_eq!(location.access_notes, ["step-free access", "hearing loop at reception"]);
    assert_eq!(read.session_templates, [template.clone()]);
    let listed = c.list_clinics(pb::ListClinicsRequest { service_code: "to-fracture".into(), ..Default::default() }).await.unwrap();
    assert_eq!(listed.into_inner().clinics.len(), 1);
    assert_error(
        &c.get_clinic(pb::GetClinicRequest { id: uuid::Uuid::now_v7().to_string() }).await.unwrap_err(),
        Code::NotFound,
        "NOT_FOUND",
    );

    // Slots page by keyset: two pages of 3 cover the first six (two weeks of four), in order, without repeats.
    let end_time = Some(pac_platform::convert::timestamp(Utc::now() + chrono::Duration::days(30)));
    let page = |token: String| {
        let mut c = p.client();
        let clinic_id = clinic.id.clone();
        async move {
            c.list_slots(pb::ListSlotsRequest { clinic_id, page_size: 3, end_time, page_token: token, ..Default::default() })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let first = page(String::new()).await;
    let second = page(first.next_page_token.clone()).await;
    let starts: Vec<i64> = first.slots.iter().chain(&second.slots).map(|s| s.start_time.unwrap().seconds).collect();
    assert_eq!(starts.len(), 6);
    assert!(starts.windows(2).all(|w| w[0] < w[1]), "{starts:?}");
    let foreign = c
        .list_slots(pb::ListSlotsRequest {
            clinic_id: uuid::Uuid::now_v7().to_string(),
            end_time,
            page_token: first.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_error(&foreign, Code::InvalidArgument, "PAGE_TOKEN_INVALID");
    // Search pages the same way, with the default window.
    let search = |token: String| {
        let mut c = p.client();
        let code = clinic.service_code.clone();
        async move {
            let target = Some(pb::search_slots_request::Target::ServiceCode(code));
            c.search_slots(pb::SearchSlotsRequest { target, page_size: 3, page_token: token, ..Default::default() })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let page_one = search(String::new()).await;
    let page_two = search(page_one.next_page_token.clone()).await;
    let found: Vec<String> = page_one.slots.iter().chain(&page_two.slots).map(|s| s.id.clone()).collect();
    let listed: Vec<String> = first.slots.iter().chain(&second.slots).map(|s| s.id.clone()).collect();
    assert_eq!(found, listed);

    let patients = p.patients(2).await;
    let a = p.book(&first.slots[0].id, &patients[0]).await.unwrap();
    let b = p.book(&first.slots[1].id, &patients[1]).await.unwrap();
    let mine = c.list_appointments(pb::ListAppointmentsRequest { patient_id: patients[0].clone(), ..Default::default() }).await.unwrap();
    assert_eq!(mine.into_inner().appointments, [a.clone()]);
    let day = first.slots[0].local_date;
    let that_day = c
        .list_appointments(pb::ListAppointmentsRequest { clinic_id: clinic.id.clone(), day, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .appointments;
    assert_eq!(that_day.iter().map(|x| x.id.clone()).collect::<Vec<_>>(), [a.id.clone(), b.id.clone()]);
    let cancelled_only = c
        .list_appointments(pb::ListAppointmentsRequest {
            clinic_id: clinic.id.clone(),
            day,
            statuses: vec![S::Cancelled as i32],
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(cancelled_only.into_inner().appointments.is_empty());
    let neither = c.list_appointments(pb::ListAppointmentsRequest::default()).await.unwrap_err();
    assert_error(&neither, Code::InvalidArgument, "FILTER_REQUIRED");
}
