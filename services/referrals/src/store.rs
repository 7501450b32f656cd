//! Every SQL statement of the referrals service. The schema's constraints hold the invariants (one
//! live appointment per referral, status and appointment agree, task counts follow the tasks).
//!
//! Organisation scope: the statements that read or lock referrals for a caller take the caller's
//! scope (`pac_platform::Caller::scope`; `None` when unscoped) and carry it in their `WHERE`
//! clause, so another organisation's referral is not found and never on a worklist. The service
//! directory is shared and not scoped; the followers of other services' events read unscoped.

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{PgConnection, PgExecutor, Postgres, QueryBuilder};
use uuid::Uuid;

use crate::domain::eligibility::{Priority, Rules, Sex};
use crate::domain::referral::{RebookReason, Status};
use crate::domain::rtt::{Clock, Code, LaterDnaPolicy, State};
use crate::model::{Note, Referral, ServiceEntry, Worklist, WorklistKey};

type Result<T> = std::result::Result<T, sqlx::Error>;

/// The organisations a caller may see (`None`: every one); see `pac_platform::Caller::scope`.
pub type Scope<'a> = Option<&'a [String]>;

fn corrupt(what: &str) -> sqlx::Error {
    sqlx::Error::Decode(format!("stored {what} is not valid").into())
}

// ---------------------------------------------------------------------------------------------
// Directory

const SERVICE_COLUMNS: &str = "code, name, specialty, min_age, max_age, sexes, sources, catchment, required_information, \
                               priorities, target_wait_days, stuck_thresholds, later_dna_policy, created_at, organisation";

#[derive(sqlx::FromRow)]
struct ServiceRow {
    code: String,
    name: String,
    specialty: String,
    min_age: Option<i32>,
    max_age: Option<i32>,
    sexes: Vec<i16>,
    sources: Vec<String>,
    catchment: Vec<String>,
    required_information: Vec<String>,
    priorities: Vec<i16>,
    target_wait_days: i32,
    stuck_thresholds: sqlx::types::Json<Vec<crate::domain::worklist::Threshold>>,
    later_dna_policy: String,
    created_at: DateTime<Utc>,
    organisation: String,
}

impl ServiceRow {
    fn into_entry(self) -> Result<ServiceEntry> {
        let rules = Rules {
            min_age: self.min_age.map(|a| a as u32),
            max_age: self.max_age.map(|a| a as u32),
            sexes: self.sexes.iter().map(|s| Sex::from_value(i32::from(*s)).ok_or_else(|| corrupt("sex"))).collect::<Result<_>>()?,
            sources: self.sources,
            priorities: self
                .priorities
                .iter()
                .map(|p| Priority::from_value(i32::from(*p)).ok_or_else(|| corrupt("priority")))
                .collect::<Result<_>>()?,
            catchment: self.catchment,
            required_information: self.required_information,
        };
        Ok(ServiceEntry {
            code: self.code,
            name: self.name,
            specialty: self.specialty,
            rules,
            target_wait_days: self.target_wait_days,
            thresholds: self.stuck_thresholds.0,
            later_dna: if self.later_dna_policy == "discharge" { LaterDnaPolicy::Discharge } else { LaterDnaPolicy::Rebook },
            created_at: self.created_at,
            organisation: self.organisation,
        })
    }
}

fn later_dna_code(policy: LaterDnaPolicy) -> &'static str {
    match policy {
        LaterDnaPolicy::Discharge => "discharge",
        LaterDnaPolicy::Rebook => "rebook",
    }
}

/// Inserts a service; `false` when its code is taken.
pub async fn insert_service(conn: &mut PgConnection, s: &ServiceEntry) -> Result<bool> {
    let inserted = sqlx::query(
        "INSERT INTO services (code, name, specialty, min_age, max_age, sexes, sources, catchment, required_information, \
                               priorities, target_wait_days, stuck_thresholds, later_dna_policy, created_at, organisation) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) ON CONFLICT (code) DO NOTHING",
    )
    .bind(&s.code)
    .bind(&s.name)
    .bind(&s.specialty)
    .bind(s.rules.min_age.map(|a| a as i32))
    .bind(s.rules.max_age.map(|a| a as i32))
    .bind(s.rules.sexes.iter().map(|x| x.value()).collect::<Vec<_>>())
    .bind(&s.rules.sources)
    .bind(&s.rules.catchment)
    .bind(&s.rules.required_information)
    .bind(s.rules.priorities.iter().map(|p| p.value()).collect::<Vec<_>>())
    .bind(s.target_wait_days)
    .bind(sqlx::types::Json(&s.thresholds))
    .bind(later_dna_code(s.later_dna))
    .bind(s.created_at)
    .bind(&s.organisation)
    .execute(conn)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

pub async fn find_service(executor: impl PgExecutor<'_>, code: &str) -> Result<Option<ServiceEntry>> {
    let sql = format!("SELECT {SERVICE_COLUMNS} FROM services WHERE code = $1");
    let row: Option<ServiceRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(code).fetch_optional(executor).await?;
    row.map(ServiceRow::into_entry).transpose()
}

/// Services after `after` (by code), at most `limit`.
pub async fn list_services(executor: impl PgExecutor<'_>, after: &str, limit: i64) -> Result<Vec<ServiceEntry>> {
    let sql = format!("SELECT {SERVICE_COLUMNS} FROM services WHERE code > $1 ORDER BY code LIMIT $2");
    let rows: Vec<ServiceRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(after).bind(limit).fetch_all(executor).await?;
    rows.into_iter().map(ServiceRow::into_entry).collect()
}

// ---------------------------------------------------------------------------------------------
// Referrals

const REFERRAL_COLUMNS: &str = "id, version, patient_id, service_code, priority, status, referrer_organisation, referrer_clinician, \
     source, reason, information, received_at, clock_code, clock_state, clock_started, clock_ended, appointment_ids, \
     current_appointment_id, rebook_reason, dna_follow_up, missed_appointment_ids, attended_appointment_ids, triage_code, triage_text, \
     redirected_to, redirected_from, status_since, stuck_after, open_tasks, unassigned_tasks, created_at, updated_at, worklist_date, \
     organisation";

/// The scope predicate on referrals, with the scope bound as `$2`.
const SCOPED: &str = "($2::text[] IS NULL OR organisation = ANY($2))";

#[derive(sqlx::FromRow)]
struct ReferralRow {
    id: Uuid,
    version: i32,
    patient_id: Uuid,
    service_code: String,
    priority: i16,
    status: String,
    referrer_organisation: String,
    referrer_clinician: String,
    source: String,
    reason: String,
    information: Vec<String>,
    received_at: DateTime<Utc>,
    clock_code: i16,
    clock_state: String,
    clock_started: NaiveDate,
    clock_ended: Option<NaiveDate>,
    appointment_ids: Vec<Uuid>,
    current_appointment_id: Option<Uuid>,
    rebook_reason: Option<String>,
    dna_follow_up: bool,
    missed_appointment_ids: Vec<Uuid>,
    attended_appointment_ids: Vec<Uuid>,
    triage_code: String,
    triage_text: String,
    redirected_to: Option<Uuid>,
    redirected_from: Option<Uuid>,
    status_since: DateTime<Utc>,
    stuck_after: Option<DateTime<Utc>>,
    open_tasks: i32,
    unassigned_tasks: i32,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    worklist_date: NaiveDate,
    organisation: String,
}

impl ReferralRow {
    fn into_referral(self) -> Result<(Referral, WorklistKey)> {
        let clock = Clock {
            started: self.clock_started,
            code: Code::from_value(i32::from(self.clock_code)).ok_or_else(|| corrupt("clock code"))?,
            state: State::from_code(&self.clock_state).ok_or_else(|| corrupt("clock state"))?,
            ended: self.clock_ended,
        };
        let referral = Referral {
            id: self.id,
            version: self.version,
            patient_id: self.patient_id,
            service_code: self.service_code,
            priority: Priority::from_value(i32::from(self.priority)).ok_or_else(|| corrupt("priority"))?,
            status: Status::from_code(&self.status).ok_or_else(|| corrupt("status"))?,
            referrer_organisation: self.referrer_organisation,
            referrer_clinician: self.referrer_clinician,
            source: self.source,
            reason: self.reason,
            information: self.information,
            received_at: self.received_at,
            clock,
            appointment_ids: self.appointment_ids,
            current_appointment_id: self.current_appointment_id,
            rebook_reason: self
                .rebook_reason
                .as_deref()
                .map(|r| RebookReason::from_code(r).ok_or_else(|| corrupt("rebook reason")))
                .transpose()?,
            dna_follow_up: self.dna_follow_up,
            missed: self.missed_appointment_ids,
            attended: self.attended_appointment_ids,
            triage_code: self.triage_code,
            triage_text: self.triage_text,
            redirected_to: self.redirected_to,
            redirected_from: self.redirected_from,
            status_since: self.status_since,
            stuck_after: self.stuck_after,
            open_tasks: self.open_tasks,
            unassigned_tasks: self.unassigned_tasks,
            created_at: self.created_at,
            updated_at: self.updated_at,
            organisation: self.organisation,
        };
        Ok((referral, (self.worklist_date, self.id)))
    }
}

fn referral(row: Option<ReferralRow>) -> Result<Option<Referral>> {
    row.map(|r| r.into_referral().map(|(referral, _)| referral)).transpose()
}

pub async fn insert_referral(conn: &mut PgConnection, r: &Referral) -> Result<()> {
    sqlx::query(
        "INSERT INTO referrals (id, version, patient_id, service_code, priority, status, referrer_organisation, referrer_clinician, \
             source, reason, information, received_at, clock_code, clock_state, clock_started, clock_ended, appointment_ids, \
             current_appointment_id, rebook_reason, dna_follow_up, missed_appointment_ids, attended_appointment_ids, triage_code, \
             triage_text, redirected_to, redirected_from, status_since, stuck_after, created_at, updated_at, organisation) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, \
                 $25, $26, $27, $28, $29, $30, $31)",
    )
    .bind(r.id)
    .bind(r.version)
    .bind(r.patient_id)
    .bind(&r.service_code)
    .bind(r.priority.value())
    .bind(r.status.code())
    .bind(&r.referrer_organisation)
    .bind(&r.referrer_clinician)
    .bind(&r.source)
    .bind(&r.reason)
    .bind(&r.information)
    .bind(r.received_at)
    .bind(r.clock.code.value() as i16)
    .bind(r.clock.state.code())
    .bind(r.clock.started)
    .bind(r.clock.ended)
    .bind(&r.appointment_ids)
    .bind(r.current_appointment_id)
    .bind(r.rebook_reason.map(|x| x.code()))
    .bind(r.dna_follow_up)
    .bind(&r.missed)
    .bind(&r.attended)
    .bind(&r.triage_code)
    .bind(&r.triage_text)
    .bind(r.redirected_to)
    .bind(r.redirected_from)
    .bind(r.status_since)
    .bind(r.stuck_after)
    .bind(r.created_at)
    .bind(r.updated_at)
    .bind(&r.organisation)
    .execute(conn)
    .await?;
    Ok(())
}

/// Writes a changed referral over the stored one (locked by the caller); `version` as given. The
/// organisation is not written: it never changes.
pub async fn update_referral(conn: &mut PgConnection, r: &Referral) -> Result<()> {
    sqlx::query(
        "UPDATE referrals SET version = $2, patient_id = $3, status = $4, information = $5, clock_code = $6, clock_state = $7, \
             clock_started = $8, clock_ended = $9, appointment_ids = $10, current_appointment_id = $11, rebook_reason = $12, \
             dna_follow_up = $13, missed_appointment_ids = $14, attended_appointment_ids = $15, triage_code = $16, triage_text = $17, \
             redirected_to = $18, status_since = $19, stuck_after = $20, updated_at = $21 \
         WHERE id = $1",
    )
    .bind(r.id)
    .bind(r.version)
    .bind(r.patient_id)
    .bind(r.status.code())
    .bind(&r.information)
    .bind(r.clock.code.value() as i16)
    .bind(r.clock.state.code())
    .bind(r.clock.started)
    .bind(r.clock.ended)
    .bind(&r.appointment_ids)
    .bind(r.current_appointment_id)
    .bind(r.rebook_reason.map(|x| x.code()))
    .bind(r.dna_follow_up)
    .bind(&r.missed)
    .bind(&r.attended)
    .bind(&r.triage_code)
    .bind(&r.triage_text)
    .bind(r.redirected_to)
    .bind(r.status_since)
    .bind(r.stuck_after)
    .bind(r.updated_at)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn find_referral(executor: impl PgExecutor<'_>, id: Uuid, scope: Scope<'_>) -> Result<Option<Referral>> {
    let sql = format!("SELECT {REFERRAL_COLUMNS} FROM referrals WHERE id = $1 AND {SCOPED}");
    referral(sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).bind(scope).fetch_optional(executor).await?)
}

pub async fn lock_referral(conn: &mut PgConnection, id: Uuid, scope: Scope<'_>) -> Result<Option<Referral>> {
    let sql = format!("SELECT {REFERRAL_COLUMNS} FROM referrals WHERE id = $1 AND {SCOPED} FOR UPDATE");
    referral(sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).bind(scope).fetch_optional(conn).await?)
}

/// The referral `appointment_id` was booked for (live or not), locked.
pub async fn lock_by_appointment(conn: &mut PgConnection, appointment_id: Uuid) -> Result<Option<Referral>> {
    let sql = format!("SELECT {REFERRAL_COLUMNS} FROM referrals WHERE appointment_ids @> ARRAY[$1::uuid] FOR UPDATE");
    referral(sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(appointment_id).fetch_optional(conn).await?)
}

/// The referral whose live appointment is `appointment_id`, locked.
pub async fn lock_by_current_appointment(conn: &mut PgConnection, appointment_id: Uuid) -> Result<Option<Referral>> {
    let sql = format!("SELECT {REFERRAL_COLUMNS} FROM referrals WHERE current_appointment_id = $1 FOR UPDATE");
    referral(sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(appointment_id).fetch_optional(conn).await?)
}

/// A worklist page: the referrals in scope after `after` that pass `filter`, soonest breach first.
/// One ordered index scan per status and priority (and, for a scoped caller, per organisation),
/// merged, so that a page costs the same however many referrals wait.
pub async fn worklist(
    executor: impl PgExecutor<'_>,
    filter: &Worklist,
    after: Option<WorklistKey>,
    limit: i64,
    scope: Scope<'_>,
) -> Result<Vec<(Referral, WorklistKey)>> {
    if scope.is_some_and(<[String]>::is_empty) {
        return Ok(Vec::new());
    }
    let mut query = QueryBuilder::<Postgres>::new(format!("SELECT {REFERRAL_COLUMNS} FROM ("));
    let conditions = |query: &mut QueryBuilder<Postgres>| {
        if let Some(service) = &filter.service_code {
            query.push(" AND service_code = ").push_bind(service.clone());
        }
        if let Some(by) = filter.breaching_by {
            query.push(" AND worklist_date <= ").push_bind(by);
        }
        if filter.dna_follow_up {
            query.push(" AND dna_follow_up");
        }
        if filter.unassigned_tasks {
            query.push(" AND unassigned_tasks > 0");
        }
        if let Some(at) = filter.stuck_at {
            query.push(" AND stuck_after IS NOT NULL AND stuck_after <= ").push_bind(at);
        }
        if let Some((date, id)) = after {
            query.push(" AND (worklist_date, id) > (").push_bind(date).push(", ").push_bind(id).push(")");
        }
    };
    if let Some(patient) = filter.patient_id {
        // A patient has few referrals: one scan of theirs.
        query.push(format!("SELECT {REFERRAL_COLUMNS} FROM referrals WHERE patient_id = ")).push_bind(patient);
        if let Some(organisations) = scope {
            query.push(" AND organisation = ANY(").push_bind(organisations.to_vec()).push(")");
        }
        if !filter.statuses.is_empty() {
            query.push(" AND status = ANY(").push_bind(filter.statuses.iter().map(|s| s.code()).collect::<Vec<_>>()).push(")");
        }
        if !filter.priorities.is_empty() {
            query.push(" AND priority = ANY(").push_bind(filter.priorities.iter().map(|p| p.value()).collect::<Vec<_>>()).push(")");
        }
        conditions(&mut query);
    } else {
        let priorities = if filter.priorities.is_empty() { Priority::ALL.to_vec() } else { filter.priorities.clone() };
        let organisations: Vec<Option<&String>> = match scope {
            Some(organisations) => organisations.iter().map(Some).collect(),
            None => vec![None],
        };
        let mut first = true;
        for organisation in &organisations {
            for status in &filter.statuses {
                for priority in &priorities {
                    if !first {
                        query.push(" UNION ALL ");
                    }
                    first = false;
                    // Status codes and priority values come from the domain's enums, not from the caller.
                    query.push(format!(
                        "(SELECT {REFERRAL_COLUMNS} FROM referrals WHERE status = '{}' AND priority = {}",
                        status.code(),
                        priority.value()
                    ));
                    if let Some(organisation) = organisation {
                        query.push(" AND organisation = ").push_bind((*organisation).clone());
                    }
                    conditions(&mut query);
                    query.push(" ORDER BY worklist_date, id LIMIT ").push_bind(limit).push(")");
                }
            }
        }
    }
    query.push(") r ORDER BY worklist_date, id LIMIT ").push_bind(limit);
    let rows: Vec<ReferralRow> = query.build_query_as().fetch_all(executor).await?;
    rows.into_iter().map(ReferralRow::into_referral).collect()
}

/// Appends to the clock's history.
pub async fn insert_clock_event(
    conn: &mut PgConnection,
    referral_id: Uuid,
    clock: &Clock,
    on: NaiveDate,
    cause: &str,
    actor: &str,
) -> Result<()> {
    sqlx::query("INSERT INTO clock_events (referral_id, code, on_date, cause, actor_subject) VALUES ($1, $2, $3, $4, $5)")
        .bind(referral_id)
        .bind(clock.code.value() as i16)
        .bind(on)
        .bind(cause)
        .bind(actor)
        .execute(conn)
        .await?;
    Ok(())
}

/// Re-points the merged-away patient's referrals to the survivor, recording each move; returns the
/// referrals moved (locked).
pub async fn repoint_patient(conn: &mut PgConnection, merge_id: Uuid, merged: Uuid, survivor: Uuid) -> Result<Vec<Uuid>> {
    sqlx::query_scalar(
        "WITH moved AS ( \
             UPDATE referrals SET patient_id = $3, version = version + 1, updated_at = now() WHERE patient_id = $2 RETURNING id \
         ) \
         INSERT INTO patient_moves (merge_id, referral_id, from_patient, to_patient) \
         SELECT $1, id, $2, $3 FROM moved ON CONFLICT DO NOTHING RETURNING referral_id",
    )
    .bind(merge_id)
    .bind(merged)
    .bind(survivor)
    .fetch_all(conn)
    .await
}

/// Moves back what a merge moved (once); returns the referrals moved.
pub async fn unrepoint_patient(conn: &mut PgConnection, merge_id: Uuid) -> Result<Vec<Uuid>> {
    sqlx::query_scalar(
        "WITH undone AS ( \
             UPDATE patient_moves SET undone = true WHERE merge_id = $1 AND NOT undone RETURNING referral_id, from_patient, to_patient \
         ) \
         UPDATE referrals r SET patient_id = u.from_patient, version = r.version + 1, updated_at = now() \
         FROM undone u WHERE r.id = u.referral_id AND r.patient_id = u.to_patient RETURNING r.id",
    )
    .bind(merge_id)
    .fetch_all(conn)
    .await
}

// ---------------------------------------------------------------------------------------------
// Notes and tasks

const NOTE_COLUMNS: &str =
    "id, referral_id, task, text, team, due_date, completed_at, author_subject, author_role, author_organisation, created_at";

#[derive(sqlx::FromRow)]
struct NoteRow {
    id: Uuid,
    referral_id: Uuid,
    task: bool,
    text: String,
    team: String,
    due_date: Option<NaiveDate>,
    completed_at: Option<DateTime<Utc>>,
    author_subject: String,
    author_role: String,
    author_organisation: String,
    created_at: DateTime<Utc>,
}

impl From<NoteRow> for Note {
    fn from(r: NoteRow) -> Self {
        Note {
            id: r.id,
            referral_id: r.referral_id,
            task: r.task,
            text: r.text,
            team: r.team,
            due_date: r.due_date,
            completed_at: r.completed_at,
            author: pac_platform::Actor { subject: r.author_subject, role: r.author_role, organisation: r.author_organisation },
            created_at: r.created_at,
        }
    }
}

pub async fn insert_note(conn: &mut PgConnection, n: &Note) -> Result<()> {
    sqlx::query(
        "INSERT INTO notes (id, referral_id, task, text, team, due_date, completed_at, author_subject, author_role, \
                            author_organisation, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(n.id)
    .bind(n.referral_id)
    .bind(n.task)
    .bind(&n.text)
    .bind(&n.team)
    .bind(n.due_date)
    .bind(n.completed_at)
    .bind(&n.author.subject)
    .bind(&n.author.role)
    .bind(&n.author.organisation)
    .bind(n.created_at)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn notes_of(executor: impl PgExecutor<'_>, referral_id: Uuid) -> Result<Vec<Note>> {
    let sql = format!("SELECT {NOTE_COLUMNS} FROM notes WHERE referral_id = $1 ORDER BY created_at, id");
    let rows: Vec<NoteRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(referral_id).fetch_all(executor).await?;
    Ok(rows.into_iter().map(Note::from).collect())
}

/// Marks a task done (once); the task as it now is, or `None` when the referral has no such task.
pub async fn complete_task(conn: &mut PgConnection, referral_id: Uuid, task_id: Uuid, at: DateTime<Utc>) -> Result<Option<Note>> {
    sqlx::query("UPDATE notes SET completed_at = $3 WHERE id = $1 AND referral_id = $2 AND task AND completed_at IS NULL")
        .bind(task_id)
        .bind(referral_id)
        .bind(at)
        .execute(&mut *conn)
        .await?;
    let sql = format!("SELECT {NOTE_COLUMNS} FROM notes WHERE id = $1 AND referral_id = $2 AND task");
    let row: Option<NoteRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(task_id).bind(referral_id).fetch_optional(conn).await?;
    Ok(row.map(Note::from))
}
