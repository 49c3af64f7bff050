//! The layers every opened store is wrapped in, each written once per
//! capability trait: [`Checked`](checked::Checked) (the contract's
//! argument checks) and [`Traced`](traced::Traced) (a `tracing` span per
//! call).

pub mod checked;
pub mod traced;
