//! The layers every opened store is wrapped in, each written once per
//! capability trait: [`Checked`](checked::Checked) (the contract's
//! argument checks) and [`Traced`](traced::Traced) (a `tracing` span per
//! call); and, around a store whose redaction mode is `secrets`,
//! [`Redacting`](redacting::Redacting).

pub mod checked;
pub mod redacting;
pub mod traced;
