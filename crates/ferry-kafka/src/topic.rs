//! From a Ferry topic to a Kafka topic name.

/// The longest topic name Kafka accepts.
pub(crate) const MAX_TOPIC_LEN: usize = 249;

/// Whether Kafka allows `c` in a topic name.
pub(crate) fn is_legal(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// The Kafka topic of a Ferry topic: `prefix` followed by the topic, each
/// character Kafka does not allow replaced with `_`. `None` when the result
/// is not a valid name (empty, `.` or `..`, or longer than 249 characters).
pub(crate) fn kafka_topic(prefix: &str, topic: &str) -> Option<String> {
    let mut name = String::with_capacity(prefix.len() + topic.len());
    name.push_str(prefix);
    name.extend(topic.chars().map(|c| if is_legal(c) { c } else { '_' }));
    let valid = !topic.is_empty() && name != "." && name != ".." && name.len() <= MAX_TOPIC_LEN;
    valid.then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_illegal_characters() {
        assert_eq!(
            kafka_topic("ferry.", "order.placed").as_deref(),
            Some("ferry.order.placed")
        );
        assert_eq!(kafka_topic("", "a b/c:é").as_deref(), Some("a_b_c__"));
        assert_eq!(kafka_topic("", ""), None);
        assert_eq!(kafka_topic("", ".."), None);
        assert_eq!(kafka_topic("", &"x".repeat(250)), None);
        assert!(kafka_topic("", &"x".repeat(249)).is_some());
    }
}
