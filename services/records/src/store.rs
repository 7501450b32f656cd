//! All SQL of the records service. Invariants live in the schema (unique NHS number, unique local
//! identifier per issuer, one active merge per record); this module turns their violations into
//! domain errors.
//!
//! Organisation scope: every statement that reads or changes patients for a caller takes the
//! caller's scope (`pac_platform::Caller::scope`, `None` for an unscoped caller) and carries it in
//! its `WHERE` clause (`SCOPED`), so another organisation's patient is never read, counted or
//! returned; it is "not found".

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, NaiveDate, Utc};
use pac_platform::Actor;
use pac_platform::caller::within;
use pac_platform::error::violated_constraint;
use sqlx::error::ErrorKind;
use sqlx::postgres::{PgArguments, Postgres};
use sqlx::query::Query;
use sqlx::{PgConnection, PgExecutor, PgPool, QueryBuilder};
use uuid::Uuid;

use crate::domain::demographics::{Email, OdsCode, PersonName, Phone};
use crate::domain::matching::MatchProfile;
use crate::domain::nhs_number::NhsNumber;
use crate::domain::patient::{Address, ContactPreferences, Demographics, LocalIdentifier, NhsNumberStatus, PatientRecord, Sex};
use crate::error::RecordsError;

const PATIENT_COLUMNS: &str = "p.id, p.version, p.nhs_number, p.nhs_number_status, p.given_name, p.family_name, \
    p.birth_date, p.sex, p.address_lines, p.locality, p.district, p.postcode, p.country, p.phone, p.email, \
    p.gp_practice_code, p.preferred_language, p.interpreter_needed, p.accessibility_needs, \
    p.preferred_contact_method, p.consented_contact_methods, p.restricted, p.merged_into, p.created_at, p.updated_at, \
    p.organisation, ARRAY(SELECT l.issuer FROM records.local_identifiers l WHERE l.patient_id = p.id ORDER BY l.issuer, l.value) AS local_issuers, \
    ARRAY(SELECT l.value FROM records.local_identifiers l WHERE l.patient_id = p.id ORDER BY l.issuer, l.value) AS local_values";

/// The demographic columns, in the order `bind_demographics` binds them.
const DEMOGRAPHIC_COLUMNS: &str = "nhs_number, nhs_number_status, given_name, family_name, birth_date, sex, \
    address_lines, locality, district, postcode, postcode_outward, country, phone, email, gp_practice_code, \
    preferred_language, interpreter_needed, accessibility_needs, preferred_contact_method, \
    consented_contact_methods, restricted, search_name, family_phonetic";
const DEMOGRAPHIC_COUNT: usize = 23;

type PgQuery<'q> = Query<'q, Postgres, PgArguments>;

/// The organisations a caller may see (`None`: every one); see `pac_platform::Caller::scope`.
pub type Scope<'a> = Option<&'a [String]>;

/// The scope predicate on `p`, with the scope bound as `$2`.
const SCOPED: &str = "($2::text[] IS NULL OR p.organisation = ANY($2))";

fn bind_demographics<'q>(query: PgQuery<'q>, d: &'q Demographics) -> PgQuery<'q> {
    let profile = d.match_profile();
    query
        .bind(d.nhs_number.as_ref().map(NhsNumber::as_str))
        .bind(i16::from(d.nhs_number_status.code()))
        .bind(d.given_name.as_str())
        .bind(d.family_name.as_str())
        .bind(d.birth_date)
        .bind(d.sex as i16)
        .bind(d.address.lines.as_slice())
        .bind(d.address.locality.as_str())
        .bind(d.address.district.as_str())
        .bind(d.address.postcode.as_str())
        .bind(d.address.postcode_outward().map(str::to_string))
        .bind(d.address.country.as_str())
        .bind(d.phone.as_ref().map(Phone::as_str))
        .bind(d.email.as_ref().map(Email::as_str))
        .bind(d.gp_practice_code.as_ref().map(OdsCode::as_str))
        .bind(d.preferred_language.as_deref())
        .bind(d.interpreter_needed)
        .bind(d.accessibility_needs.as_slice())
        .bind(d.contact_preferences.preferred as i16)
        .bind(d.contact_preferences.consented.iter().map(|m| *m as i16).collect::<Vec<_>>())
        .bind(d.restricted)
        .bind(d.search_name())
        .bind(profile.family_phonetic)
}

fn placeholders(from: usize, count: usize) -> String {
    (from..from + count).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

#[derive(sqlx::FromRow)]
struct PatientRow {
    id: Uuid,
    version: i64,
    nhs_number: Option<String>,
    nhs_number_status: i16,
    given_name: String,
    family_name: String,
    birth_date: NaiveDate,
    sex: i16,
    address_lines: Vec<String>,
    locality: String,
    district: String,
    postcode: String,
    country: String,
    phone: Option<String>,
    email: Option<String>,
    gp_practice_code: Option<String>,
    preferred_language: Option<String>,
    interpreter_needed: bool,
    accessibility_needs: Vec<String>,
    preferred_contact_method: i16,
    consented_contact_methods: Vec<i16>,
    restricted: bool,
    merged_into: Option<Uuid>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    organisation: String,
    local_issuers: Vec<String>,
    local_values: Vec<String>,
}

impl PatientRow {
    /// Rows were validated on the way in; the schema's checks keep them that way.
    fn into_record(self) -> PatientRecord {
        PatientRecord {
            id: self.id,
            version: self.version,
            organisation: self.organisation,
            merged_into: self.merged_into,
            created_at: self.created_at,
            updated_at: self.updated_at,
            demographics: Demographics {
                nhs_number: self.nhs_number.map(NhsNumber::from_stored),
                nhs_number_status: NhsNumberStatus::from_code(self.nhs_number_status.into()).unwrap_or(NhsNumberStatus::TRACE_REQUIRED),
                local_identifiers: self
                    .local_issuers
                    .into_iter()
                    .zip(self.local_values)
                    .map(|(issuer, value)| LocalIdentifier { issuer: OdsCode::from_stored(issuer), value })
                    .collect(),
                given_name: PersonName::from_stored(self.given_name),
                family_name: PersonName::from_stored(self.family_name),
                birth_date: self.birth_date,
                sex: Sex::from_code(self.sex.into()).unwrap_or(Sex::Unknown),
                address: Address {
                    lines: self.address_lines,
                    locality: self.locality,
                    district: self.district,
                    postcode: self.postcode,
                    country: self.country,
                },
                phone: self.phone.map(Phone::from_stored),
                email: self.email.map(Email::from_stored),
                gp_practice_code: self.gp_practice_code.map(OdsCode::from_stored),
                preferred_language: self.preferred_language,
                interpreter_needed: self.interpreter_needed,
                accessibility_needs: self.accessibility_needs,
                contact_preferences: ContactPreferences {
                    preferred: self.preferred_contact_method.into(),
                    consented: self.consented_contact_methods.into_iter().map(i32::from).collect(),
                },
                restricted: self.restricted,
            },
        }
    }
}

/// A registration, written in one statement: the idempotency record, the patient, its local
/// identifiers and the PatientRegistered event commit together or not at all.
pub struct Registration<'a> {
    pub record: &'a PatientRecord,
    pub duplicate_override: Option<serde_json::Value>,
    pub request_id: Option<&'a str>,
    pub request_hash: &'a [u8],
    pub response: Vec<u8>,
    pub event_id: Uuid,
    pub event_payload: Vec<u8>,
    pub actor: &'a Actor,
    pub trace_id: Option<String>,
    /// The registering caller's scope: decides whether a clash names the record it clashes with.
    pub scope: Scope<'a>,
}

pub enum Registered {
    Created,
    /// Another request with the same request id committed first.
    RequestIdTaken,
}

pub async fn insert_registration(pool: &PgPool, r: Registration<'_>) -> Result<Registered, RecordsError> {
    let n = DEMOGRAPHIC_COUNT;
    let sql = format!(
        "WITH idem AS ( \
            INSERT INTO records.idempotency (operation, request_id, request_hash, response) \
            SELECT 'RegisterPatient', ${rid}, ${rhash}, ${resp} WHERE ${rid}::text IS NOT NULL \
            ON CONFLICT DO NOTHING RETURNING 1 \
         ), patient AS ( \
            INSERT INTO records.patients (id, {DEMOGRAPHIC_COLUMNS}, duplicate_override, created_at, updated_at, organisation) \
            SELECT $1, {demographics}, ${dup}, ${at}, ${at}, ${owner} \
            WHERE ${rid}::text IS NULL OR EXISTS (SELECT 1 FROM idem) \
            RETURNING id \
         ), identifiers AS ( \
            INSERT INTO records.local_identifiers (issuer, value, patient_id, organisation) \
            SELECT t.issuer, t.value, patient.id, ${owner} FROM patient, unnest(${issuers}::text[], ${values}::text[]) AS t(issuer, value) \
         ), event AS ( \
            INSERT INTO records.outbox (event_id, event_type, aggregate_id, payload, actor_subject, actor_role, \
                                        actor_organisation, request_id, trace_id, organisation, patient_ids) \
            SELECT ${eid}, 'PatientRegistered', patient.id, ${payload}, ${subject}, ${role}, ${org}, ${rid}, ${trace}, \
                   ${owner}, ARRAY[patient.id] FROM patient \
         ) \
         SELECT count(*) FROM patient",
        demographics = placeholders(2, n),
        dup = n + 2,
        at = n + 3,
        rid = n + 4,
        rhash = n + 5,
        resp = n + 6,
        issuers = n + 7,
        values = n + 8,
        eid = n + 9,
        payload = n + 10,
        subject = n + 11,
        role = n + 12,
        org = n + 13,
        trace = n + 14,
        owner = n + 15,
    );
    let demographics = &r.record.demographics;
    let (issuers, values): (Vec<&str>, Vec<&str>) =
        demographics.local_identifiers.iter().map(|l| (l.issuer.as_str(), l.value.as_str())).unzip();
    let query = bind_demographics(sqlx::query(sqlx::AssertSqlSafe(sql)).bind(r.record.id), demographics)
        .bind(r.duplicate_override)
        .bind(r.record.created_at)
        .bind(r.request_id)
        .bind(r.request_hash)
        .bind(r.response)
        .bind(issuers)
        .bind(values)
        .bind(r.event_id)
        .bind(r.event_payload)
        .bind(&r.actor.subject)
        .bind(&r.actor.role)
        .bind(&r.actor.organisation)
        .bind(r.trace_id)
        .bind(&r.record.organisation);
    let inserted: i64 = match query.fetch_one(pool).await {
        Ok(row) => sqlx::Row::try_get(&row, 0)?,
        Err(error) => return Err(identity_conflict(pool, demographics, error, r.scope, &r.record.organisation).await),
    };
    Ok(if inserted == 1 { Registered::Created } else { Registered::RequestIdTaken })
}

/// Turns a unique violation on the NHS number or a local identifier into a domain error naming the
/// record that holds it. Both are unique within an organisation, so the record is the caller's own
/// organisation's (`existing` is `None` only for a record the caller's scope does not reach, which
/// the error never names). Looks it up through the pool: the failed statement's transaction is
/// aborted.
async fn identity_conflict(pool: &PgPool, demographics: &Demographics, error: sqlx::Error, scope: Scope<'_>, owner: &str) -> RecordsError {
    let visible = |record: PatientRecord| within(scope, &record.organisation).then_some(record.id);
    let owner = [owner.to_string()];
    match violated_constraint(&error) {
        Some((ErrorKind::UniqueViolation, "patients_nhs_number_key")) => {
            let Some(nhs_number) = &demographics.nhs_number else { return error.into() };
            match find_by_nhs_number(pool, nhs_number.as_str(), Some(&owner)).await {
                Ok(Some(existing)) => RecordsError::NhsNumberExists { existing: visible(existing) },
                Ok(None) => RecordsError::Conflict,
                Err(error) => error.into(),
            }
        }
        Some((ErrorKind::UniqueViolation, "local_identifiers_pkey")) => {
            for identifier in &demographics.local_identifiers {
                let found = find_by_local_identifier(pool, identifier.issuer.as_str(), &identifier.value, Some(&owner)).await;
                if let Ok(Some(existing)) = found {
                    let issuer = identifier.issuer.as_str().to_string();
                    return RecordsError::LocalIdentifierExists { issuer, existing: visible(existing) };
                }
            }
            RecordsError::Conflict
        }
        _ => error.into(),
    }
}

pub async fn find(executor: impl PgExecutor<'_>, id: Uuid, scope: Scope<'_>) -> Result<Option<PatientRecord>, sqlx::Error> {
    let sql = format!("SELECT {PATIENT_COLUMNS} FROM records.patients p WHERE p.id = $1 AND {SCOPED}");
    fetch_optional(sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).bind(scope), executor).await
}

pub async fn find_by_nhs_number(
    executor: impl PgExecutor<'_>,
    nhs_number: &str,
    scope: Scope<'_>,
) -> Result<Option<PatientRecord>, sqlx::Error> {
    let sql = format!("SELECT {PATIENT_COLUMNS} FROM records.patients p WHERE p.nhs_number = $1 AND {SCOPED}");
    fetch_optional(sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(nhs_number).bind(scope), executor).await
}

async fn fetch_optional<'q, 'c>(
    query: sqlx::query::QueryAs<'q, Postgres, PatientRow, PgArguments>,
    executor: impl PgExecutor<'c>,
) -> Result<Option<PatientRecord>, sqlx::Error> {
    Ok(query.fetch_optional(executor).await?.map(PatientRow::into_record))
}

pub async fn find_by_local_identifier(
    executor: impl PgExecutor<'_>,
    issuer: &str,
    value: &str,
    scope: Scope<'_>,
) -> Result<Option<PatientRecord>, sqlx::Error> {
    let sql = format!(
        "SELECT {PATIENT_COLUMNS} FROM records.patients p \
         JOIN records.local_identifiers i ON i.patient_id = p.id \
         WHERE i.issuer = $3 AND i.value = $1 AND {SCOPED}"
    );
    fetch_optional(sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(value).bind(scope).bind(issuer), executor).await
}

/// Locks the given records (those in scope) for update, in id order (so two merges of the same pair
/// cannot deadlock).
pub async fn lock(conn: &mut PgConnection, ids: &[Uuid], scope: Scope<'_>) -> Result<Vec<PatientRecord>, sqlx::Error> {
    let sql = format!("SELECT {PATIENT_COLUMNS} FROM records.patients p WHERE p.id = ANY($1) AND {SCOPED} ORDER BY p.id FOR UPDATE OF p");
    // Planned afresh each time, as `candidates` is: `= ANY` planned on an empty table is a full scan.
    let query = sqlx::query_as(sqlx::AssertSqlSafe(sql)).persistent(false);
    let rows: Vec<PatientRow> = query.bind(ids).bind(scope).fetch_all(conn).await?;
    Ok(rows.into_iter().map(PatientRow::into_record).collect())
}

/// Whether the duplicate-candidate query may keep a plan cached on its connections. A plan made
/// while `records.patients` was nearly empty reads whole indexes once it is not (about 20 ms a call
/// at 10,000 patients, 150 ms at 50,000), and on a server whose autovacuum is off nothing ever
/// replaces it. So until the table holds [`PlanCache::ROWS`] records the query is planned afresh on
/// every call (an unnamed statement: the planner sees the table's current size even with no
/// statistics, for about 0.5 ms of planning); from then on it is prepared once per connection, and
/// the plan made then stays good as the table grows. Records are never deleted, so it never turns back.
#[derive(Clone, Default)]
pub struct PlanCache(Arc<AtomicBool>);

impl PlanCache {
    /// A table this size is planned as the large table it becomes.
    pub const ROWS: i64 = 5_000;

    pub fn ready(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Counts (up to [`Self::ROWS`]) the records there are; true once there are enough.
    pub async fn check(&self, executor: impl PgExecutor<'_>) -> Result<bool, sqlx::Error> {
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM (SELECT 1 FROM records.patients LIMIT $1) t")
            .bind(Self::ROWS)
            .persistent(false)
            .fetch_one(executor)
            .await?;
        if rows >= Self::ROWS {
            self.0.store(true, Ordering::Relaxed);
        }
        Ok(self.ready())
    }
}

/// Records that could be the same person as `profile` (same NHS number, birth date or phone, or the
/// same family name sound within a year of the birth date), as profiles to score. Active records
/// only. `cached_plan`: see [`PlanCache`].
pub async fn candidates(
    executor: impl PgExecutor<'_>,
    profile: &MatchProfile,
    limit: i64,
    scope: Scope<'_>,
    cached_plan: bool,
) -> Result<Vec<(Uuid, MatchProfile)>, sqlx::Error> {
    let rows: Vec<CandidateRow> = sqlx::query_as(
        // One arm per index, each an index look-up whatever the statistics say.
        "SELECT p.id, p.given_name, p.family_name, p.birth_date, p.sex, p.postcode, p.phone, p.nhs_number \
         FROM records.patients p WHERE p.id IN ( \
             SELECT id FROM records.patients WHERE merged_into IS NULL AND birth_date = $1 \
             UNION SELECT id FROM records.patients WHERE merged_into IS NULL AND family_phonetic = $3 AND $3 <> '' \
                                                   AND birth_date BETWEEN $1 - 366 AND $1 + 366 \
             UNION SELECT id FROM records.patients WHERE merged_into IS NULL AND phone = $4 \
             UNION SELECT id FROM records.patients WHERE merged_into IS NULL AND nhs_number = $5) \
         AND ($2::text[] IS NULL OR p.organisation = ANY($2)) \
         LIMIT $6",
    )
    .persistent(cached_plan)
    .bind(profile.birth_date)
    .bind(scope)
    .bind(&profile.family_phonetic)
    .bind(profile.phone.as_deref())
    .bind(profile.nhs_number.as_deref())
    .bind(limit)
    .fetch_all(executor)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let profile = MatchProfile::new(
                &r.given_name,
                &r.family_name,
                Some(r.birth_date),
                Sex::from_code(r.sex.into()).unwrap_or(Sex::Unknown),
                (!r.postcode.is_empty()).then_some(r.postcode),
                r.phone,
                r.nhs_number,
            );
            (r.id, profile)
        })
        .collect())
}

#[derive(sqlx::FromRow)]
struct CandidateRow {
    id: Uuid,
    given_name: String,
    family_name: String,
    birth_date: NaiveDate,
    sex: i16,
    postcode: String,
    phone: Option<String>,
    nhs_number: Option<String>,
}

pub async fn find_many(executor: impl PgExecutor<'_>, ids: &[Uuid], scope: Scope<'_>) -> Result<Vec<PatientRecord>, sqlx::Error> {
    let sql = format!("SELECT {PATIENT_COLUMNS} FROM records.patients p WHERE p.id = ANY($1) AND {SCOPED}");
    // Planned afresh each time, as `candidates` is: `= ANY` planned on an empty table is a full scan.
    let query = sqlx::query_as(sqlx::AssertSqlSafe(sql)).persistent(false);
    let rows: Vec<PatientRow> = query.bind(ids).bind(scope).fetch_all(executor).await?;
    Ok(rows.into_iter().map(PatientRow::into_record).collect())
}

/// Writes new demographics over a locked record (locked in the caller's `scope`) and bumps its
/// version. The owning organisation is not written: it never changes.
pub async fn update(
    conn: &mut PgConnection,
    pool: &PgPool,
    record: &PatientRecord,
    identifiers_changed: bool,
    scope: Scope<'_>,
) -> Result<(), RecordsError> {
    let n = DEMOGRAPHIC_COUNT;
    let sql = format!(
        "UPDATE records.patients SET ({DEMOGRAPHIC_COLUMNS}) = ({}), version = ${}, updated_at = ${} WHERE id = $1",
        placeholders(2, n),
        n + 2,
        n + 3
    );
    let demographics = &record.demographics;
    let query =
        bind_demographics(sqlx::query(sqlx::AssertSqlSafe(sql)).bind(record.id), demographics).bind(record.version).bind(record.updated_at);
    if let Err(error) = query.execute(&mut *conn).await {
        return Err(identity_conflict(pool, demographics, error, scope, &record.organisation).await);
    }
    if identifiers_changed {
        sqlx::query("DELETE FROM records.local_identifiers WHERE patient_id = $1").bind(record.id).execute(&mut *conn).await?;
        let (issuers, values): (Vec<&str>, Vec<&str>) =
            demographics.local_identifiers.iter().map(|l| (l.issuer.as_str(), l.value.as_str())).unzip();
        let inserted = sqlx::query(
            "INSERT INTO records.local_identifiers (issuer, value, patient_id, organisation) \
             SELECT t.issuer, t.value, $3, $4 FROM unnest($1::text[], $2::text[]) AS t(issuer, value)",
        )
        .bind(issuers)
        .bind(values)
        .bind(record.id)
        .bind(&record.organisation)
        .execute(&mut *conn)
        .await;
        if let Err(error) = inserted {
            return Err(identity_conflict(pool, demographics, error, scope, &record.organisation).await);
        }
    }
    Ok(())
}

/// Points a record at its survivor (or back at nothing), bumping its version.
pub async fn set_merged_into(conn: &mut PgConnection, id: Uuid, survivor: Option<Uuid>, at: DateTime<Utc>) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE records.patients SET merged_into = $2, version = version + 1, updated_at = $3 WHERE id = $1")
        .bind(id)
        .bind(survivor)
        .bind(at)
        .execute(conn)
        .await?;
    Ok(())
}

/// The recorded fact of a merge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeRecord {
    pub id: Uuid,
    pub survivor_id: Uuid,
    pub merged_id: Uuid,
    pub reason: String,
    pub moved_identifiers: Vec<String>,
    pub merged_by: Actor,
    pub merged_at: DateTime<Utc>,
    pub unmerged_by: Option<Actor>,
    pub unmerged_at: Option<DateTime<Utc>>,
}

pub async fn insert_merge(
    conn: &mut PgConnection,
    merge: &MergeRecord,
    survivor_snapshot: Vec<u8>,
    merged_snapshot: Vec<u8>,
) -> Result<(), RecordsError> {
    let result = sqlx::query(
        "INSERT INTO records.merges (id, survivor_id, merged_id, reason, moved_identifiers, survivor_snapshot, \
         merged_snapshot, merged_by_subject, merged_by_role, merged_by_organisation, merged_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(merge.id)
    .bind(merge.survivor_id)
    .bind(merge.merged_id)
    .bind(&merge.reason)
    .bind(&merge.moved_identifiers)
    .bind(survivor_snapshot)
    .bind(merged_snapshot)
    .bind(&merge.merged_by.subject)
    .bind(&merge.merged_by.role)
    .bind(&merge.merged_by.organisation)
    .bind(merge.merged_at)
    .execute(conn)
    .await;
    match result {
        Ok(_) => Ok(()),
        Err(error) => match violated_constraint(&error) {
            Some((ErrorKind::UniqueViolation, "merges_active_merged_id")) => Err(RecordsError::Conflict),
            _ => Err(error.into()),
        },
    }
}

/// Marks the active merge of `merged_id` as reversed and returns it.
pub async fn close_merge(
    conn: &mut PgConnection,
    merged_id: Uuid,
    reason: &str,
    by: &Actor,
    at: DateTime<Utc>,
) -> Result<Option<MergeRecord>, sqlx::Error> {
    let row: Option<MergeRow> = sqlx::query_as(
        "UPDATE records.merges SET unmerge_reason = $2, unmerged_by_subject = $3, unmerged_by_role = $4, \
         unmerged_by_organisation = $5, unmerged_at = $6 \
         WHERE merged_id = $1 AND unmerged_at IS NULL \
         RETURNING id, survivor_id, merged_id, reason, moved_identifiers, merged_by_subject, merged_by_role, \
                   merged_by_organisation, merged_at, unmerged_by_subject, unmerged_by_role, unmerged_by_organisation, unmerged_at",
    )
    .bind(merged_id)
    .bind(reason)
    .bind(&by.subject)
    .bind(&by.role)
    .bind(&by.organisation)
    .bind(at)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(MergeRow::into_merge))
}

#[derive(sqlx::FromRow)]
struct MergeRow {
    id: Uuid,
    survivor_id: Uuid,
    merged_id: Uuid,
    reason: String,
    moved_identifiers: Vec<String>,
    merged_by_subject: String,
    merged_by_role: String,
    merged_by_organisation: String,
    merged_at: DateTime<Utc>,
    unmerged_by_subject: Option<String>,
    unmerged_by_role: Option<String>,
    unmerged_by_organisation: Option<String>,
    unmerged_at: Option<DateTime<Utc>>,
}

impl MergeRow {
    fn into_merge(self) -> MergeRecord {
        MergeRecord {
            id: self.id,
            survivor_id: self.survivor_id,
            merged_id: self.merged_id,
            reason: self.reason,
            moved_identifiers: self.moved_identifiers,
            merged_by: Actor { subject: self.merged_by_subject, role: self.merged_by_role, organisation: self.merged_by_organisation },
            merged_at: self.merged_at,
            unmerged_by: self.unmerged_by_subject.map(|subject| Actor {
                subject,
                role: self.unmerged_by_role.unwrap_or_default(),
                organisation: self.unmerged_by_organisation.unwrap_or_default(),
            }),
            unmerged_at: self.unmerged_at,
        }
    }
}

/// Search criteria, already validated.
pub struct SearchCriteria {
    pub name_key: Option<String>,
    pub birth_date: Option<NaiveDate>,
    pub postcode: Option<String>,
    pub postcode_outward: Option<String>,
    pub phone: Option<String>,
    pub limit: i64,
    pub offset: i64,
}

/// Lowest name similarity a search returns.
pub const MIN_NAME_SCORE: f64 = 0.3;

/// Active records that fit every filter: by name similarity when a name is given, else by name.
/// Restricted records never match a postcode filter.
///
/// A name search takes the nearest `offset + limit` names at or above the similarity floor from the
/// trigram index (an index-ordered nearest-neighbour scan, which stops early however large the table,
/// and prunes what cannot reach the floor) and orders ties by id inside
/// that window, so pages are stable. A tie-breaker in the scan itself would make Postgres rank every
/// row instead.
/// A scoped search only ever reads the caller's organisations' patients (the scope is part of the
/// scan's condition, so a page is full whenever enough of theirs match).
pub async fn search(pool: &PgPool, criteria: &SearchCriteria, scope: Scope<'_>) -> Result<Vec<(PatientRecord, f64)>, sqlx::Error> {
    if let Some(words) = vocabulary_words(criteria) {
        return search_by_vocabulary(pool, criteria, &words, scope).await;
    }
    let mut query = QueryBuilder::<Postgres>::new("SELECT * FROM (SELECT ");
    query.push(PATIENT_COLUMNS);
    match &criteria.name_key {
        Some(name) => query.push(", 1 - (").push_bind(name.clone()).push(" <<-> p.search_name)::float8 AS score"),
        None => query.push(", 1::float8 AS score"),
    };
    query.push(" FROM records.patients p WHERE p.merged_into IS NULL");
    if let Some(organisations) = scope {
        query.push(" AND p.organisation = ANY(").push_bind(organisations.to_vec()).push(")");
    }
    if let Some(date) = criteria.birth_date {
        query.push(" AND p.birth_date = ").push_bind(date);
    }
    if let Some(postcode) = &criteria.postcode {
        query.push(" AND p.postcode = ").push_bind(postcode.clone()).push(" AND NOT p.restricted AND p.postcode <> ''");
    }
    if let Some(outward) = &criteria.postcode_outward {
        query.push(" AND p.postcode_outward = ").push_bind(outward.clone()).push(" AND NOT p.restricted");
    }
    if let Some(phone) = &criteria.phone {
        query.push(" AND p.phone = ").push_bind(phone.clone());
    }
    if let Some(name) = &criteria.name_key {
        // Names under the floor are dropped below anyway; saying so lets the index prune them, so a
        // rare or misspelt name stops the scan once the names above the floor are exhausted.
        query.push(" AND p.search_name %> ").push_bind(name.clone());
    }
    match &criteria.name_key {
        Some(name) => query
            .push(" ORDER BY ")
            .push_bind(name.clone())
            .push(" <<-> p.search_name LIMIT ")
            .push_bind(criteria.offset + criteria.limit)
            .push(") hits WHERE score >= ")
            .push_bind(MIN_NAME_SCORE)
            .push(" ORDER BY score DESC, id"),
        None => query
            .push(" ORDER BY p.family_name, p.given_name, p.id LIMIT ")
            .push_bind(criteria.offset + criteria.limit)
            .push(") hits ORDER BY family_name, given_name, id"),
    };
    query.push(" OFFSET ").push_bind(criteria.offset).push(" LIMIT ").push_bind(criteria.limit);
    let rows: Vec<SearchRow> = query.build_query_as().fetch_all(pool).await?;
    Ok(rows.into_iter().map(|row| (row.patient.into_record(), row.score)).collect())
}

/// Near words looked up per query word.
const NEAR_WORDS: i64 = 10;

/// The words a name-only search of two or more words looks up in the vocabulary: those of three or
/// more letters (an initial says too little to look up; it still counts in the ranking).
fn vocabulary_words(criteria: &SearchCriteria) -> Option<Vec<String>> {
    let filtered =
        criteria.birth_date.is_some() || criteria.postcode.is_some() || criteria.postcode_outward.is_some() || criteria.phone.is_some();
    let name = criteria.name_key.as_deref().filter(|_| !filtered)?;
    let words: Vec<String> = name.split(' ').filter(|w| w.chars().count() >= 3).map(str::to_string).collect();
    (words.len() >= 2).then_some(words)
}

/// A name-only search through the name vocabulary (migration 0003): the known full names that
/// contain a near word for every query word, ranked by the same word similarity as the index scan;
/// then their active patients by exact name, best names first, ties by id. Patients are fetched in
/// batches of names that grow and always end on a score boundary, so a common name is answered from
/// its first few names and the work depends on how many names are near, not on how many patients
/// there are.
async fn search_by_vocabulary(
    pool: &PgPool,
    criteria: &SearchCriteria,
    words: &[String],
    scope: Scope<'_>,
) -> Result<Vec<(PatientRecord, f64)>, sqlx::Error> {
    const MAX_NAMES: i64 = 1000;
    let name = criteria.name_key.clone().unwrap_or_default();
    let mut query = QueryBuilder::<Postgres>::new("SELECT n.search_name, word_similarity(");
    query.push_bind(name.clone()).push(", n.search_name)::float8 AS score FROM records.search_names n WHERE word_similarity(");
    query.push_bind(name).push(", n.search_name) >= ").push_bind(MIN_NAME_SCORE);
    for word in words {
        query
            .push(" AND string_to_array(n.search_name, ' ') && (SELECT array_agg(word) FROM (SELECT word FROM records.name_words ORDER BY word <-> ")
            .push_bind(word.clone())
            .push(" LIMIT ")
            .push_bind(NEAR_WORDS)
            .push(") near)");
    }
    query.push(" ORDER BY score DESC, n.search_name LIMIT ").push_bind(MAX_NAMES);
    let names: Vec<(String, f64)> = query.build_query_as().fetch_all(pool).await?;

    let window = usize::try_from(criteria.offset + criteria.limit).unwrap_or(usize::MAX);
    let mut hits: Vec<(Uuid, f64)> = Vec::new();
    let (mut next, mut batch) = (0, 8);
    while next < names.len() && hits.len() < window {
        let mut end = (next + batch).min(names.len());
        while end < names.len() && names[end].1 == names[end - 1].1 {
            end += 1;
        }
        let (batch_names, scores): (Vec<String>, Vec<f64>) = names[next..end].iter().cloned().unzip();
        let rows: Vec<(Uuid, f64)> = sqlx::query_as(
            "SELECT p.id, r.score FROM unnest($1::text[], $2::float8[]) AS r (name, score) \
             CROSS JOIN LATERAL (SELECT id FROM records.patients p WHERE p.search_name = r.name AND p.merged_into IS NULL \
                                 AND ($4::text[] IS NULL OR p.organisation = ANY($4)) ORDER BY id LIMIT $3) p \
             ORDER BY r.score DESC, p.id",
        )
        .bind(&batch_names)
        .bind(&scores)
        .bind(window as i64)
        .bind(scope)
        .fetch_all(pool)
        .await?;
        hits.extend(rows);
        (next, batch) = (end, batch * 4);
    }
    hits.truncate(window);
    let page: Vec<(Uuid, f64)> = hits.into_iter().skip(usize::try_from(criteria.offset).unwrap_or(usize::MAX)).collect();
    let ids: Vec<Uuid> = page.iter().map(|(id, _)| *id).collect();
    let mut records = find_many(pool, &ids, scope).await?;
    Ok(page
        .into_iter()
        .filter_map(|(id, score)| {
            let at = records.iter().position(|r| r.id == id)?;
            Some((records.swap_remove(at), score))
        })
        .collect())
}

#[derive(sqlx::FromRow)]
struct SearchRow {
    #[sqlx(flatten)]
    patient: PatientRow,
    score: f64,
}
