//! A store URL parsed once ([`StoreUrl`]) and the one grammar of its
//! parameters (`…?key=value&key=value`), shared by every backend:
//! percent-decoding, one value per key, each parameter read at most once
//! and an unread one refused, one boolean grammar, and numbers checked
//! against documented bounds. Every refusal is
//! [`PersistenceError::InvalidInput`] naming the parameter and what it
//! accepts; nothing here panics on any input, and a password in the URL
//! never reaches `Debug` or an error.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::time::Duration;

use crate::error::PersistenceError;

/// Shortest and longest timeout a URL may ask for, in milliseconds
/// (1 ms to 1 hour). Zero is refused: no backend has a "do not wait" mode.
pub const TIMEOUT_MS: (u64, u64) = (1, 3_600_000);

/// One parsed parameter: its key, its percent-decoded value, and the raw
/// `key=value` text (for parameters a driver parses itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// The percent-decoded key.
    pub key: String,
    /// The percent-decoded value (`""` for a bare `key`).
    pub value: String,
    /// The pair as written in the URL.
    pub raw: String,
}

/// A store URL, parsed once: `scheme:LOCATION?key=value&…`.
///
/// The facade reads the scheme to pick a backend; the backend's options
/// read the location and [`take`](Self::take) the parameters they know,
/// each at most once; [`finish`](Self::finish) then refuses any parameter
/// nobody took, naming it and the ones the backend asked for. So a typo
/// (`synchronus=full`) is an error, never a silent default.
pub struct StoreUrl {
    scheme: String,
    location: String,
    params: Vec<Param>,
    taken: Vec<Cell<bool>>,
    asked: RefCell<Vec<&'static str>>,
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<&str> = self.params.iter().map(|p| p.key.as_str()).collect();
        f.debug_struct("StoreUrl")
            .field("scheme", &self.scheme)
            .field("location", &redact_userinfo(&self.location))
            .field("parameters", &keys)
            .finish()
    }
}

/// `//user:password@host…` with the password replaced by `***`, for
/// display.
fn redact_userinfo(location: &str) -> String {
    let Some(authority) = location.strip_prefix("//") else {
        return location.to_owned();
    };
    let end = authority.find('/').unwrap_or(authority.len());
    match authority[..end].rfind('@') {
        Some(at) => match authority[..at].split_once(':') {
            Some((user, _)) => format!("//{user}:***{}", &authority[at..]),
            None => location.to_owned(),
        },
        None => location.to_owned(),
    }
}

/// `url` as it may be shown (in errors, logs, a tool's output): the
/// password of `scheme://user:password@host…` replaced by `***` (the last
/// `@` before the path ends the user info), everything else as given.
/// The one way this layer and its tools hide a password.
pub fn redact(url: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (url, None),
    };
    let redacted = match head.split_once(':') {
        Some((scheme, location)) => format!("{scheme}:{}", redact_userinfo(location)),
        None => head.to_owned(),
    };
    match query {
        Some(q) => format!("{redacted}?{q}"),
        None => redacted,
    }
}

impl StoreUrl {
    /// Parses `url` (surrounding white space ignored): the scheme is the
    /// text before the first `:` (ASCII letters, digits, `+`, `-`, `.`,
    /// starting with a letter, compared in lower case), the location the
    /// text after it up to the first `?`, and the parameters as
    /// [`parse_query`] reads them.
    ///
    /// # Errors
    /// `InvalidInput` for a missing or malformed scheme and for every
    /// refusal of [`parse_query`]. The message never repeats the URL.
    pub fn parse(url: &str) -> Result<Self, PersistenceError> {
        let url = url.trim();
        let (scheme, rest) = url.split_once(':').ok_or_else(|| {
            PersistenceError::InvalidInput(
                "a store URL starts with its scheme: memory:, sqlite://PATH, sled://PATH, postgres://…".into(),
            )
        })?;
        let well_formed = scheme.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        if !well_formed {
            return Err(PersistenceError::InvalidInput(format!(
                "store URL scheme {:?} is not a scheme (letters, digits, + - .)",
                scheme.chars().take(32).collect::<String>()
            )));
        }
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        let params = parse_query(query)?;
        Ok(Self {
            scheme: scheme.to_ascii_lowercase(),
            location: location.to_owned(),
            taken: params.iter().map(|_| Cell::new(false)).collect(),
            params,
            asked: RefCell::new(Vec::new()),
        })
    }

    /// The scheme, in lower case (`sqlite`, `postgres`, …).
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// The location as written: everything between the scheme's `:` and
    /// the first `?` (`//rel/path.db`, `:memory:`, `//user@host/db`).
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The location as a path: a leading `//` dropped (`sqlite:///abs` is
    /// `/abs`, `sqlite://rel` is `rel`), then percent-decoded (`%20` is a
    /// space, `%3F` a `?`).
    ///
    /// # Errors
    /// `InvalidInput` for a malformed escape or bytes that are not UTF-8.
    pub fn path(&self) -> Result<String, PersistenceError> {
        let raw = self.location.strip_prefix("//").unwrap_or(&self.location);
        decode(raw)
    }

    /// The URL without its parameters (`scheme:location`), for a driver
    /// that parses the address itself. It may hold a password: never show it.
    pub fn without_parameters(&self) -> String {
        format!("{}:{}", self.scheme, self.location)
    }

    /// Takes parameter `key`, if the URL has it; a second take of the same
    /// key finds nothing. `key` counts as known to this backend either way
    /// (for [`finish`](Self::finish)'s message).
    pub fn take(&self, key: &'static str) -> Option<&Param> {
        let mut asked = self.asked.borrow_mut();
        if !asked.contains(&key) {
            asked.push(key);
        }
        let i = self.params.iter().position(|p| p.key == key)?;
        let taken = self.taken.get(i)?;
        if taken.replace(true) {
            return None;
        }
        self.params.get(i)
    }

    /// Takes every parameter not taken yet (for a driver that reads its
    /// own, as libpq's), in URL order.
    pub fn take_rest(&self) -> Vec<&Param> {
        self.params.iter().zip(&self.taken).filter(|(_, t)| !t.replace(true)).map(|(p, _)| p).collect()
    }

    /// Whether the URL has parameter `key` (taken or not).
    pub fn has(&self, key: &str) -> bool {
        self.params.iter().any(|p| p.key == key)
    }

    /// Ends reading: the first parameter nobody took is refused.
    ///
    /// # Errors
    /// `InvalidInput` naming the unknown parameter and the ones `backend`
    /// knows.
    pub fn finish(&self, backend: &str) -> Result<(), PersistenceError> {
        let asked = self.asked.borrow();
        match self.params.iter().zip(&self.taken).find(|(_, t)| !t.get()) {
            Some((p, _)) => Err(p.unknown(backend, &asked)),
            None => Ok(()),
        }
    }
}

/// Splits `url` at its first `?` into the part before and its parameters.
///
/// # Errors
/// `InvalidInput` for a malformed percent escape, a value that is not
/// UTF-8 once decoded, an empty key, or a key given twice.
pub fn split_query(url: &str) -> Result<(&str, Vec<Param>), PersistenceError> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    Ok((base, parse_query(query)?))
}

/// Parses `key=value&key=value` (no leading `?`).
///
/// # Errors
/// As [`split_query`].
pub fn parse_query(query: &str) -> Result<Vec<Param>, PersistenceError> {
    let mut out: Vec<Param> = Vec::new();
    for raw in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = raw.split_once('=').unwrap_or((raw, ""));
        let key = decode(k)?;
        if key.is_empty() {
            return Err(PersistenceError::InvalidInput(format!("URL parameter {raw:?} has no name")));
        }
        if out.iter().any(|p| p.key == key) {
            return Err(PersistenceError::InvalidInput(format!("URL parameter {key} is given more than once")));
        }
        let value =
            decode(v).map_err(|e| PersistenceError::InvalidInput(format!("URL parameter {key}: {}", e.reason())))?;
        out.push(Param { value, key, raw: raw.to_owned() });
    }
    Ok(out)
}

/// Percent-decodes one key or value (`+` stays `+`, as in RFC 3986).
///
/// # Errors
/// `InvalidInput` for a `%` not followed by two hex digits, or bytes that
/// are not UTF-8.
pub fn decode(text: &str) -> Result<String, PersistenceError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    PersistenceError::InvalidInput(format!("URL text {text:?} has a % not followed by two hex digits"))
                })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| PersistenceError::InvalidInput(format!("URL text {text:?} is not UTF-8 once decoded")))
}

impl Param {
    fn refuse(&self, accepts: &str) -> PersistenceError {
        PersistenceError::InvalidInput(format!("URL parameter {}={:?}: {accepts}", self.key, self.value))
    }

    /// The value as a whole number in `min..=max`.
    ///
    /// # Errors
    /// `InvalidInput` naming the parameter and the range, for anything else
    /// (negative, fractional, non-numeric, out of range, overflowing).
    pub fn number(&self, min: u64, max: u64) -> Result<u64, PersistenceError> {
        self.value
            .parse::<u64>()
            .ok()
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| self.refuse(&format!("expected a whole number from {min} to {max}")))
    }

    /// The value as a count in `min..=max`.
    ///
    /// # Errors
    /// As [`Param::number`].
    pub fn count(&self, min: usize, max: usize) -> Result<usize, PersistenceError> {
        let n = self.number(min as u64, max as u64)?;
        usize::try_from(n).map_err(|_| self.refuse("too large for this machine"))
    }

    /// The value as milliseconds within [`TIMEOUT_MS`].
    ///
    /// # Errors
    /// As [`Param::number`].
    pub fn millis(&self) -> Result<Duration, PersistenceError> {
        Ok(Duration::from_millis(self.number(TIMEOUT_MS.0, TIMEOUT_MS.1)?))
    }

    /// The value as a boolean: `true|false`, `1|0`, `yes|no`, `on|off`
    /// (any case). Every boolean parameter of every backend reads this way.
    ///
    /// # Errors
    /// `InvalidInput` for anything else.
    pub fn boolean(&self) -> Result<bool, PersistenceError> {
        match self.value.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err(self.refuse("expected true or false")),
        }
    }

    /// The value, which must be one of `choices` (any case); returns the
    /// matching choice.
    ///
    /// # Errors
    /// `InvalidInput` listing the choices.
    pub fn one_of<'c>(&self, choices: &[&'c str]) -> Result<&'c str, PersistenceError> {
        choices
            .iter()
            .find(|c| c.eq_ignore_ascii_case(&self.value))
            .copied()
            .ok_or_else(|| self.refuse(&format!("expected one of {}", choices.join(", "))))
    }

    /// The refusal for a parameter this backend does not know.
    pub fn unknown(&self, backend: &str, known: &[&str]) -> PersistenceError {
        PersistenceError::InvalidInput(format!(
            "unknown {backend} URL parameter {:?} (known: {})",
            self.key,
            if known.is_empty() { "none".to_owned() } else { known.join(", ") }
        ))
    }
}

/// Checks that a timeout given in code (not a URL) lies within
/// [`TIMEOUT_MS`].
///
/// # Errors
/// `InvalidInput` naming the option and the range.
pub fn check_timeout(name: &str, timeout: Duration) -> Result<(), PersistenceError> {
    let ms = timeout.as_millis();
    if (u128::from(TIMEOUT_MS.0)..=u128::from(TIMEOUT_MS.1)).contains(&ms) {
        Ok(())
    } else {
        Err(PersistenceError::InvalidInput(format!(
            "{name} must be from {} ms to {} ms, got {ms} ms",
            TIMEOUT_MS.0, TIMEOUT_MS.1
        )))
    }
}

/// Checks that a count given in code lies within `min..=max`.
///
/// # Errors
/// `InvalidInput` naming the option and the range.
pub fn check_count(name: &str, n: usize, min: usize, max: usize) -> Result<(), PersistenceError> {
    if (min..=max).contains(&n) {
        Ok(())
    } else {
        Err(PersistenceError::InvalidInput(format!("{name} must be from {min} to {max}, got {n}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(q: &str) -> Param {
        match parse_query(q) {
            Ok(mut v) if v.len() == 1 => v.remove(0),
            other => panic!("{q}: {other:?}"),
        }
    }

    #[test]
    fn decodes_percent_escapes_and_keeps_raw() {
        let p = one("schema=team%5Fa");
        assert_eq!((p.key.as_str(), p.value.as_str()), ("schema", "team_a"));
        assert_eq!(p.raw, "schema=team%5Fa");
        assert_eq!(one("a=x%20y+z").value, "x y+z");
        assert_eq!(one("flag").value, "");
        assert_eq!(decode("%C3%BC").ok().as_deref(), Some("ü"));
    }

    #[test]
    fn refuses_bad_escapes_duplicates_and_empty_keys() {
        for bad in ["a=%", "a=%4", "a=%zz", "a=%FF", "a=1&a=2", "=x", "%=1"] {
            assert!(matches!(parse_query(bad), Err(PersistenceError::InvalidInput(_))), "{bad}");
        }
        assert!(parse_query("").is_ok_and(|v| v.is_empty()));
        assert!(parse_query("&&a=1&").is_ok_and(|v| v.len() == 1));
    }

    #[test]
    fn numbers_are_range_checked() {
        let p = |v: &str| one(&format!("n={v}"));
        assert_eq!(p("5").number(1, 10), Ok(5));
        assert_eq!(p("1").number(1, 10), Ok(1));
        assert_eq!(p("10").number(1, 10), Ok(10));
        for bad in
            ["0", "11", "-1", "1.5", "x", "", "18446744073709551615", "18446744073709551616", "9223372036854775807"]
        {
            let e = p(bad).number(1, 10);
            match e {
                Err(PersistenceError::InvalidInput(m)) => {
                    assert!(m.contains("n=") && m.contains("1 to 10"), "{m}")
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert_eq!(p("3600000").millis(), Ok(Duration::from_secs(3600)));
        assert!(p("0").millis().is_err());
        assert!(p("3600001").millis().is_err());
        assert_eq!(p("7").count(1, 64), Ok(7));
    }

    #[test]
    fn booleans_and_choices() {
        for (v, want) in [("TRUE", true), ("on", true), ("1", true), ("no", false)] {
            assert_eq!(one(&format!("b={v}")).boolean(), Ok(want));
        }
        assert!(one("b=maybe").boolean().is_err());
        assert_eq!(one("m=FULL").one_of(&["normal", "full"]), Ok("full"));
        assert!(one("m=off").one_of(&["normal", "full"]).is_err());
        let unknown = one("x=1").unknown("sqlite", &["a", "b"]).to_string();
        assert!(unknown.contains("a, b"), "{unknown}");
        let unknown = one("x=1").unknown("memory", &[]).to_string();
        assert!(unknown.contains("none"), "{unknown}");
        let unknown = one("x=1").unknown("sqlite", &["a", "b"]).to_string();
        assert!(unknown.contains("\"x\"") && unknown.contains("a, b"), "{unknown}");
    }

    #[test]
    fn a_store_url_is_read_once_and_every_parameter_accounted_for() {
        let u = StoreUrl::parse("  SQLite:///tmp/a%20b.db?readers=3&create=off ").expect("parses");
        assert_eq!(u.scheme(), "sqlite");
        assert_eq!(u.location(), "///tmp/a%20b.db");
        assert_eq!(u.path().as_deref(), Ok("/tmp/a b.db"));
        assert_eq!(u.take("readers").map(|p| p.value.as_str()), Some("3"));
        assert!(u.take("readers").is_none(), "a parameter is taken once");
        assert!(u.take("synchronous").is_none());
        let err = u.finish("sqlite").expect_err("create was not taken");
        let PersistenceError::InvalidInput(m) = err else { panic!("{err:?}") };
        assert!(m.contains("\"create\"") && m.contains("readers, synchronous"), "{m}");
        assert_eq!(u.take("create").map(|p| p.boolean()), Some(Ok(false)));
        assert!(u.finish("sqlite").is_ok());
        let mem = StoreUrl::parse("sqlite::memory:").expect("parses");
        assert_eq!(mem.path().as_deref(), Ok(":memory:"));
        assert_eq!(StoreUrl::parse("memory:").map(|u| u.location().to_owned()), Ok(String::new()));
        for bad in ["", "nocolon", ":x", "1a:b", "a b:c", "sqlite://x?a=%zz", "sqlite://x?a&a"] {
            assert!(matches!(StoreUrl::parse(bad), Err(PersistenceError::InvalidInput(_))), "{bad}");
        }
    }

    #[test]
    fn the_rest_goes_to_the_driver_and_passwords_stay_hidden() {
        let u = StoreUrl::parse("postgres://bob:hunter2@h:5/db?schema=a&application_name=k").expect("parses");
        assert!(u.take("schema").is_some());
        let rest: Vec<&str> = u.take_rest().iter().map(|p| p.raw.as_str()).collect();
        assert_eq!(rest, ["application_name=k"]);
        assert!(u.finish("postgres").is_ok());
        assert_eq!(u.without_parameters(), "postgres://bob:hunter2@h:5/db");
        let shown = format!("{u:?}");
        assert!(!shown.contains("hunter2") && shown.contains("bob:***@h:5"), "{shown}");
        assert!(!format!("{:?}", StoreUrl::parse("postgres://a:b@c@d/e")).contains(":b@"));
    }

    #[test]
    fn passwords_are_removed_from_urls() {
        assert_eq!(redact("postgres://koda:s3cret@db:5432/koda?schema=a"), "postgres://koda:***@db:5432/koda?schema=a");
        assert_eq!(redact("postgres://koda@db/koda"), "postgres://koda@db/koda");
        assert_eq!(redact("sqlite:///tmp/x.db"), "sqlite:///tmp/x.db");
        assert_eq!(redact("memory:"), "memory:");
        assert_eq!(redact("postgres://u:p@ss@h/db"), "postgres://u:***@h/db", "the last @ ends the user info");
        assert_eq!(redact("postgres://u:p@h?x=a@b"), "postgres://u:***@h?x=a@b");
    }

    #[test]
    fn code_given_bounds() {
        assert!(check_timeout("t", Duration::from_millis(1)).is_ok());
        assert!(check_timeout("t", Duration::ZERO).is_err());
        assert!(check_timeout("t", Duration::MAX).is_err());
        assert!(check_count("c", 0, 1, 4).is_err());
        assert!(check_count("c", 4, 1, 4).is_ok());
    }
}
