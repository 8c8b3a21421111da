//! Channel names: `namespace:name`, ASCII `[A-Za-z0-9_\-.:@#,=]`, at most 255 bytes.

use thiserror::Error;

/// Longest allowed channel name, in bytes.
pub const MAX_CHANNEL_LEN: usize = 255;

/// Why a channel name was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ChannelNameError {
    /// The name is empty.
    #[error("channel name is empty")]
    Empty,
    /// The name is longer than 255 bytes.
    #[error("channel name is longer than {MAX_CHANNEL_LEN} bytes")]
    TooLong,
    /// The name contains a character outside the allowed set.
    #[error("channel name contains {0:?}; allowed: A-Z a-z 0-9 _ - . : @ # , =")]
    BadChar(char),
}

/// A validated channel name, split into namespace and the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelName<'a> {
    /// The whole name as published.
    pub full: &'a str,
    /// The namespace: the part before the first colon, empty for the default namespace.
    pub namespace: &'a str,
    /// Users allowed by a `#alice,bob` suffix, if any.
    pub allowed_users: Option<&'a str>,
}

impl<'a> ChannelName<'a> {
    /// Validates `name` and splits it.
    pub fn parse(name: &'a str) -> Result<Self, ChannelNameError> {
        if name.is_empty() {
            return Err(ChannelNameError::Empty);
        }
        if name.len() > MAX_CHANNEL_LEN {
            return Err(ChannelNameError::TooLong);
        }
        if let Some(c) = name.chars().find(|c| {
            !(c.is_ascii_alphanumeric()
                || matches!(c, '_' | '-' | '.' | ':' | '@' | '#' | ',' | '='))
        }) {
            return Err(ChannelNameError::BadChar(c));
        }
        let namespace = name.split_once(':').map_or("", |(ns, _)| ns);
        let allowed_users = name.split_once('#').map(|(_, users)| users);
        Ok(Self {
            full: name,
            namespace,
            allowed_users,
        })
    }

    /// Whether `user` may subscribe under the `#user,...` rule (true when there is none).
    pub fn user_allowed(&self, user: &str) -> bool {
        match self.allowed_users {
            None => true,
            Some(list) => !user.is_empty() && list.split(',').any(|u| u == user),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_namespace_and_users() {
        let c = ChannelName::parse("chat:room#alice,bob").unwrap();
        assert_eq!(c.namespace, "chat");
        assert!(c.user_allowed("bob"));
        assert!(!c.user_allowed("eve"));
        assert!(!c.user_allowed(""));
        assert_eq!(ChannelName::parse("news").unwrap().namespace, "");
    }

    #[test]
    fn refuses_bad_names() {
        assert_eq!(ChannelName::parse(""), Err(ChannelNameError::Empty));
        assert_eq!(
            ChannelName::parse("a b"),
            Err(ChannelNameError::BadChar(' '))
        );
        assert_eq!(
            ChannelName::parse(&"a".repeat(256)),
            Err(ChannelNameError::TooLong)
        );
    }
}
