//! MQTT topic names and filters (3.1.1 §4.7, 5.0 §4.7), shared subscriptions (5.0 §4.8.2),
//! and the mapping onto rdmq's native topic names and patterns (`crate::broker::pattern`).
//!
//! A topic is levels separated by `/`; levels may be empty (`a//b`, `/a`, `a/`). A name has
//! no wildcards; in a filter `+` is a whole level (one level, possibly empty) and `#` the
//! whole last level (that level's parent and everything below it). Both are non-empty, at most
//! 65535 bytes, without U+0000 (MQTT-4.7.3-1, -2, -3). A filter that starts with a wildcard
//! does not match a name that starts with `$` (MQTT-4.7.2-1), so `#` does not see `$SYS/…`.
//!
//! rdmq topics are `.`-separated non-empty words; its patterns use `*` (one word) and `#` (zero
//! or more words). The mapping, level by level:
//!
//! | MQTT                        | rdmq  | why                                              |
//! |-----------------------------|-------|--------------------------------------------------|
//! | `/` between levels          | `.`   | one level is one word                            |
//! | `+` (a whole level)         | `*`   | exactly one level, exactly one word              |
//! | `#` (the whole last level)  | `#`   | zero or more: `a/#` and `a.#` both match `a`     |
//! | an empty level              | `%`   | words are non-empty; escaping never gives `%`    |
//! | `%` inside a level          | `%25` | the escape character itself                      |
//! | `.` inside a level          | `%2E` | would split the word                             |
//! | `*` inside a level          | `%2A` | a native wildcard, plain text in an MQTT name    |
//! | any other character         | same  |                                                  |
//!
//! So `sensors/temp` is `sensors.temp`, `/v1.2//x` is `%.v1%2E2.%.x`, and `a/+/#` is `a.*.#`.
//! The map is injective, so matching agrees: for a filter `f` and name `t`,
//! `matches(f, t) == pattern::matches(to_native_filter(f), to_native_topic(t))` except when
//! the `$` rule applies, which rdmq's native matcher does not have: the gateway must check
//! [`dollar_hidden`] itself before delivering a native match to an MQTT subscriber.
//! [`from_native_topic`] inverts [`to_native_topic`]; native names with no MQTT spelling (a
//! word containing `/`, `+`, U+0000 or a `%` that starts none of the three escapes, which
//! are upper-case only) are refused, and the gateway skips them for MQTT subscribers. The
//! mapping can triple a name's length; the gateway still checks rdmq's own name limit.

use std::fmt;

/// Why a topic name, filter or shared subscription is not valid, or has no mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicError(pub String);

impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Longest topic name or filter: a UTF-8 string (MQTT-4.7.3-3).
pub const TOPIC_LEN_MAX: usize = super::STRING_LEN_MAX;
/// The prefix of a shared subscription's filter (5.0 §4.8.2).
pub const SHARE_PREFIX: &str = "$share/";
/// The native word for an empty MQTT level.
pub const EMPTY_LEVEL_WORD: &str = "%";

fn check_common(s: &str, what: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError(format!("{what} is empty")));
    }
    if s.len() > TOPIC_LEN_MAX {
        return Err(TopicError(format!("{what} longer than {TOPIC_LEN_MAX} bytes")));
    }
    if s.contains('\0') {
        return Err(TopicError(format!("{what} {s:?} contains U+0000")));
    }
    Ok(())
}

/// A topic name: non-empty, without wildcards (3.1.1 §4.7.3, 5.0 §4.7.3, MQTT-3.3.2-2).
pub fn validate_name(name: &str) -> Result<(), TopicError> {
    check_common(name, "topic name")?;
    if name.contains(['+', '#']) {
        return Err(TopicError(format!("topic name {name:?} contains a wildcard")));
    }
    Ok(())
}

/// A topic filter: `+` only as a whole level, `#` only as the whole last level (§4.7.1).
pub fn validate_filter(filter: &str) -> Result<(), TopicError> {
    check_common(filter, "topic filter")?;
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        let ok = match level {
            "+" => true,
            "#" => last,
            other => !other.contains(['+', '#']),
        };
        if !ok {
            return Err(TopicError(format!(
                "topic filter {filter:?}: `+` must be a whole level and `#` the whole last level"
            )));
        }
    }
    Ok(())
}

/// Whether a filter has wildcards (5.0 servers may refuse them: Wildcard Subscription
/// Available).
pub fn is_wildcard(filter: &str) -> bool {
    filter.split('/').any(|l| l == "+" || l == "#")
}

/// Splits a shared subscription `$share/{ShareName}/{filter}` into (share name, filter);
/// `Ok(None)` for an ordinary filter. The share name is non-empty without `/`, `+` or `#`,
/// and the filter must be valid (5.0 §4.8.2).
pub fn parse_shared(filter: &str) -> Result<Option<(&str, &str)>, TopicError> {
    let Some(rest) = filter.strip_prefix(SHARE_PREFIX) else { return Ok(None) };
    let Some((group, inner)) = rest.split_once('/') else {
        return Err(TopicError(format!("shared subscription {filter:?} has no topic filter")));
    };
    if group.is_empty() || group.contains(['+', '#']) {
        return Err(TopicError(format!(
            "shared subscription {filter:?}: the share name must be non-empty, without + or #"
        )));
    }
    validate_filter(inner)?;
    Ok(Some((group, inner)))
}

/// Whether the `$` rule hides `topic` from `filter`: a filter starting with a wildcard never
/// matches a name starting with `$` (MQTT-4.7.2-1). rdmq's native matcher lacks this rule.
pub fn dollar_hidden(filter: &str, topic: &str) -> bool {
    topic.starts_with('$') && filter.starts_with(['+', '#'])
}

/// Whether the valid name `topic` matches the valid (non-shared) `filter` (§4.7.1), with the
/// `$` rule. Allocates nothing.
pub fn matches(filter: &str, topic: &str) -> bool {
    if dollar_hidden(filter, topic) {
        return false;
    }
    let mut levels = topic.split('/');
    for f in filter.split('/') {
        match f {
            // The parent level matches too: `a/#` matches `a` (§4.7.1.2).
            "#" => return true,
            "+" => {
                if levels.next().is_none() {
                    return false;
                }
            }
            literal => {
                if levels.next() != Some(literal) {
                    return false;
                }
            }
        }
    }
    levels.next().is_none()
}

/// Appends the native word for one MQTT level (see the table above).
fn push_word(out: &mut String, level: &str) {
    if level.is_empty() {
        out.push_str(EMPTY_LEVEL_WORD);
        return;
    }
    for c in level.chars() {
        match c {
            '%' => out.push_str("%25"),
            '.' => out.push_str("%2E"),
            '*' => out.push_str("%2A"),
            c => out.push(c),
        }
    }
}

/// The rdmq topic name for a valid MQTT topic name.
pub fn to_native_topic(mqtt: &str) -> Result<String, TopicError> {
    validate_name(mqtt)?;
    let mut out = String::with_capacity(mqtt.len() + 8);
    for (i, level) in mqtt.split('/').enumerate() {
        if i > 0 {
            out.push('.');
        }
        push_word(&mut out, level);
    }
    Ok(out)
}

/// The rdmq pattern for a valid MQTT topic filter (not a `$share/…` one: pass its filter part
/// from [`parse_shared`]).
pub fn to_native_filter(mqtt: &str) -> Result<String, TopicError> {
    validate_filter(mqtt)?;
    let mut out = String::with_capacity(mqtt.len() + 8);
    for (i, level) in mqtt.split('/').enumerate() {
        if i > 0 {
            out.push('.');
        }
        match level {
            "+" => out.push('*'),
            "#" => out.push('#'),
            literal => push_word(&mut out, literal),
        }
    }
    Ok(out)
}

/// The MQTT topic name for an rdmq topic name, inverting [`to_native_topic`]; an error for
/// names MQTT cannot spell.
pub fn from_native_topic(native: &str) -> Result<String, TopicError> {
    let mut out = String::with_capacity(native.len());
    for (i, word) in native.split('.').enumerate() {
        if i > 0 {
            out.push('/');
        }
        if word == EMPTY_LEVEL_WORD {
            continue;
        }
        push_level(&mut out, word, native)?;
    }
    validate_name(&out)?;
    Ok(out)
}

/// Appends the MQTT level one native word stands for.
fn push_level(out: &mut String, word: &str, native: &str) -> Result<(), TopicError> {
    let unmappable = || TopicError(format!("rdmq topic {native:?} has no MQTT topic name"));
    if word.is_empty() || word.contains(['/', '+', '#', '*', '\0']) {
        return Err(unmappable());
    }
    let mut rest = word;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let escaped = match rest.get(at..at + 3) {
            Some("%25") => '%',
            Some("%2E") => '.',
            Some("%2A") => '*',
            _ => return Err(unmappable()),
        };
        out.push(escaped);
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::pattern;

    #[test]
    fn names_and_filters() {
        for ok in ["a", "a/b", "/", "a//b", "/a", "a/", "$SYS/x", "a b/ü", "a.b*c"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/+", "a/#", "a+", "#", "a\0b"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
        assert!(validate_name(&"x".repeat(65_536)).is_err());
        assert!(validate_name(&"x".repeat(65_535)).is_ok());
        for ok in ["#", "+", "a/#", "a/+/b", "+/+", "/+", "+/", "a//#", "$SYS/#", "//"] {
            assert!(validate_filter(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a#", "a/#/b", "#/a", "a+", "a/b+/c", "++", "##", "a/\0"] {
            assert!(validate_filter(bad).is_err(), "{bad}");
        }
        assert!(is_wildcard("a/+") && is_wildcard("#") && !is_wildcard("a/b"));
    }

    #[test]
    fn matching_follows_the_spec_examples() {
        // 5.0 §4.7.1.2, §4.7.1.3, §4.7.2.
        let cases = [
            ("sport/tennis/player1/#", "sport/tennis/player1", true),
            ("sport/tennis/player1/#", "sport/tennis/player1/ranking", true),
            ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", true),
            ("sport/#", "sport", true),
            ("#", "a/b", true),
            ("sport/tennis/+", "sport/tennis/player1", true),
            ("sport/tennis/+", "sport/tennis/player1/ranking", false),
            ("sport/+", "sport", false),
            ("sport/+", "sport/", true),
            ("+/+", "/finance", true),
            ("/+", "/finance", true),
            ("+", "/finance", false),
            ("#", "$SYS/x", false),
            ("+/monitor/Clients", "$SYS/monitor/Clients", false),
            ("$SYS/#", "$SYS/monitor/Clients", true),
            ("$SYS/monitor/+", "$SYS/monitor/Clients", true),
            ("a/b", "a/b", true),
            ("a/b", "a/B", false),
            ("a//b", "a//b", true),
            ("a/+/b", "a//b", true),
        ];
        for (f, t, want) in cases {
            assert_eq!(matches(f, t), want, "{f} vs {t}");
        }
    }

    #[test]
    fn shared_subscriptions() {
        assert_eq!(parse_shared("$share/g/a/+"), Ok(Some(("g", "a/+"))));
        assert_eq!(parse_shared("$share/g/#"), Ok(Some(("g", "#"))));
        assert_eq!(parse_shared("a/b"), Ok(None));
        assert_eq!(parse_shared("$share"), Ok(None), "no slash: an ordinary filter");
        assert_eq!(parse_shared("$shared/g/a"), Ok(None));
        for bad in
            ["$share/g", "$share//a", "$share/g/", "$share/g+/a", "$share/#/a", "$share/g/a#"]
        {
            assert!(parse_shared(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn native_mapping_table() {
        let cases = [
            ("sensors/temp", "sensors.temp"),
            ("/v1.2//x", "%.v1%2E2.%.x"),
            ("a/", "a.%"),
            ("/", "%.%"),
            ("50%/a*b", "50%25.a%2Ab"),
            ("$SYS/x", "$SYS.x"),
        ];
        for (mqtt, native) in cases {
            assert_eq!(to_native_topic(mqtt).unwrap(), native);
            assert_eq!(from_native_topic(native).unwrap(), mqtt);
            assert!(pattern::validate_topic(native).is_ok(), "{native}");
        }
        assert_eq!(to_native_filter("a/+/#").unwrap(), "a.*.#");
        assert_eq!(to_native_filter("+//#").unwrap(), "*.%.#");
        assert!(to_native_topic("a/+").is_err());
        assert!(to_native_filter("a/b#").is_err());
        for unmappable in ["a/b.c", "a+b", "50%", "%2e", "%2", "a.%41", "x\0"] {
            assert!(from_native_topic(unmappable).is_err(), "{unmappable}");
        }
    }

    /// A small xorshift generator: the tests are random but repeatable.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
            from[(self.next() as usize) % from.len()]
        }
    }

    /// Levels chosen to collide: empty, escapes, look-alikes of escapes, `$`, non-ASCII.
    const LEVELS: [&str; 14] =
        ["", "a", "b", ".", "a.b", "*", "%", "%25", "%2E", "$x", "é", " ", "2E", "%%"];

    fn random_topic(rng: &mut Rng) -> String {
        let n = 1 + rng.next() % 4;
        let mut levels: Vec<&str> = (0..n).map(|_| rng.pick(&LEVELS)).collect();
        if rng.next().is_multiple_of(5) {
            levels[0] = "$SYS";
        }
        non_empty(levels.join("/"))
    }

    /// A topic or filter of one empty level is the empty string, which is invalid.
    fn non_empty(s: String) -> String {
        if s.is_empty() {
            "a".into()
        } else {
            s
        }
    }

    fn random_filter(rng: &mut Rng) -> String {
        let n = 1 + rng.next() % 4;
        let mut levels: Vec<&str> = (0..n)
            .map(|_| if rng.next().is_multiple_of(3) { "+" } else { rng.pick(&LEVELS) })
            .collect();
        if rng.next().is_multiple_of(3) {
            levels.push("#");
        }
        if rng.next().is_multiple_of(6) {
            levels[0] = "$SYS";
        }
        non_empty(levels.join("/"))
    }

    #[test]
    fn topics_round_trip_through_native_names() {
        let mut rng = Rng(0x2545_F491_4F6C_DD1D);
        for _ in 0..20_000 {
            let t = random_topic(&mut rng);
            let native = to_native_topic(&t).unwrap();
            assert!(pattern::validate_topic(&native).is_ok(), "{t:?} → {native:?}");
            assert_eq!(from_native_topic(&native).unwrap(), t, "via {native:?}");
            let f = random_filter(&mut rng);
            let native_filter = to_native_filter(&f).unwrap();
            assert!(pattern::validate_pattern(&native_filter).is_ok(), "{f:?} → {native_filter:?}");
        }
    }

    #[test]
    fn mqtt_matching_agrees_with_native_matching_except_the_dollar_rule() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let (mut matched, mut hidden) = (0, 0);
        for _ in 0..50_000 {
            let (f, t) = (random_filter(&mut rng), random_topic(&mut rng));
            let native =
                pattern::matches(&to_native_filter(&f).unwrap(), &to_native_topic(&t).unwrap());
            let mqtt = matches(&f, &t);
            assert_eq!(mqtt, native && !dollar_hidden(&f, &t), "{f:?} vs {t:?}");
            matched += usize::from(mqtt);
            hidden += usize::from(native && dollar_hidden(&f, &t));
        }
        assert!(
            matched > 1000 && hidden > 50,
            "cases exercised: {matched} matches, {hidden} hidden"
        );
        // The parent-level case both sides agree on.
        assert!(matches("a/#", "a") && pattern::matches("a.#", "a"));
        // The `$` rule is the gateway's job: native `#` sees `$SYS.x`.
        assert!(pattern::matches("#", "$SYS.x") && !matches("#", "$SYS/x"));
    }
}
