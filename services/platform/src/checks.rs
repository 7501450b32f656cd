//! Request parsing: every field of a request is checked, the caller hears of every violation at
//! once, and the handler gets its typed values only when there are none.
//!
//! ```text
//! let mut checks = Checks::default();
//! let slot_id = checks.check(parse_id("slot_id", &request.slot_id));
//! let patient_id = checks.check(parse_id("patient_id", &request.patient_id));
//! let (slot_id, patient_id) = checks.finish((slot_id, patient_id))?;
//! ```

use crate::error::{ApiError, FieldViolation};

/// A request's field violations so far.
#[derive(Debug, Default)]
pub struct Checks(Vec<FieldViolation>);

impl Checks {
    /// The value, or `None` with its violation kept.
    pub fn check<T>(&mut self, result: Result<T, FieldViolation>) -> Option<T> {
        result.map_err(|v| self.0.push(v)).ok()
    }

    /// The value, or `None` with the field violations of an INVALID_ARGUMENT error kept.
    pub fn check_invalid<T>(&mut self, result: Result<T, ApiError>) -> Option<T> {
        result.map_err(|e| self.0.extend(e.field_violations)).ok()
    }

    /// Keeps a violation found by other means.
    pub fn push(&mut self, violation: FieldViolation) {
        self.0.push(violation);
    }

    /// The checked values, or INVALID_ARGUMENT with every violation.
    pub fn finish<V: Checked>(self, values: V) -> Result<V::Value, ApiError> {
        if !self.0.is_empty() {
            return Err(ApiError::invalid(self.0));
        }
        values.value().ok_or_else(|| ApiError::internal(anyhow::anyhow!("a request field was neither parsed nor refused")))
    }
}

/// Values from [`Checks::check`]: all present once no check failed.
pub trait Checked {
    type Value;
    fn value(self) -> Option<Self::Value>;
}

/// Checks of values built in place (e.g. with `unwrap_or_default`): only the violations matter.
impl Checked for () {
    type Value = ();
    fn value(self) -> Option<()> {
        Some(())
    }
}

impl<T> Checked for Option<T> {
    type Value = T;
    fn value(self) -> Option<T> {
        self
    }
}

macro_rules! checked_tuple {
    ($($name:ident),+) => {
        impl<$($name),+> Checked for ($(Option<$name>,)+) {
            type Value = ($($name,)+);
            #[allow(non_snake_case)]
            fn value(self) -> Option<Self::Value> {
                let ($($name,)+) = self;
                Some(($($name?,)+))
            }
        }
    };
}

checked_tuple!(A, B);
checked_tuple!(A, B, C);
checked_tuple!(A, B, C, D);
checked_tuple!(A, B, C, D, E);
checked_tuple!(A, B, C, D, E, F);
checked_tuple!(A, B, C, D, E, F, G);
checked_tuple!(A, B, C, D, E, F, G, H);
checked_tuple!(A, B, C, D, E, F, G, H, I);
checked_tuple!(A, B, C, D, E, F, G, H, I, J);

/// A required message field, e.g. `request.patient`.
pub fn required<'a, T>(field: &str, value: Option<&'a T>) -> Result<&'a T, FieldViolation> {
    value.ok_or_else(|| FieldViolation::new(field, "FIELD_REQUIRED", "is required"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_violation_is_reported_and_values_come_only_without_them() {
        let mut checks = Checks::default();
        let a = checks.check(Ok::<_, FieldViolation>(1));
        let b = checks.check(Err::<u8, _>(FieldViolation::new("b", "B_INVALID", "bad")));
        let c = checks.check(Err::<u8, _>(FieldViolation::new("c", "C_INVALID", "bad")));
        let error = checks.finish((a, b, c)).unwrap_err();
        assert_eq!(error.field_violations.len(), 2);

        let mut checks = Checks::default();
        let a = checks.check(Ok::<_, FieldViolation>(1));
        let b = checks.check(Ok::<_, FieldViolation>("two"));
        assert_eq!(checks.finish((a, b)).unwrap(), (1, "two"));
    }
}
