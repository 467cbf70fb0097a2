//! Object tags a migration carries (`--copy-tags`): which tag sets a destination can hold
//! ([`TagRules`], [`TagRules::check`], pure), and the query-string form both S3
//! (`x-amz-tagging`) and Azure (`x-ms-tags`) take them in ([`encode`]).
//!
//! The rules, from the services' references: S3 takes up to 10 tags per object, keys of 1–128
//! and values of up to 256 Unicode characters of letters, digits, spaces and `_ . : / = + - @`,
//! no key starting with `aws:`; Azure blob index tags take up to 10, keys of 1–128 and values
//! of up to 256 characters of ASCII letters and digits, space and `+ - . / : = _` only.

use std::collections::BTreeMap;

/// An object's tags, by key.
pub type Tags = BTreeMap<String, String>;

/// What tags a destination holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TagRules {
    /// Amazon S3 object tags.
    S3,
    /// Azure blob index tags.
    Azure,
}

impl TagRules {
    /// Tags per object, at most.
    const MAX_TAGS: usize = 10;
    /// Characters of a key, at most.
    const MAX_KEY: usize = 128;
    /// Characters of a value, at most.
    const MAX_VALUE: usize = 256;

    fn allows(self, c: char) -> bool {
        match self {
            TagRules::S3 => {
                !c.is_control()
                    && (c.is_alphanumeric() || c.is_whitespace() || "_.:/=+-@".contains(c))
            }
            TagRules::Azure => c.is_ascii_alphanumeric() || " +-./:=_".contains(c),
        }
    }

    fn name(self) -> &'static str {
        match self {
            TagRules::S3 => "S3",
            TagRules::Azure => "Azure blob index",
        }
    }

    /// Whether the destination holds `tags` as they are; if not, why (naming the tag and the
    /// rule, so the operator can fix the source or leave `--copy-tags` off).
    pub fn check(self, tags: &Tags) -> Result<(), String> {
        if tags.len() > Self::MAX_TAGS {
            return Err(format!(
                "{} tags, over the {} {} tags an object holds",
                tags.len(),
                Self::MAX_TAGS,
                self.name()
            ));
        }
        for (key, value) in tags {
            let keys = key.chars().count();
            if keys == 0 || keys > Self::MAX_KEY {
                return Err(format!(
                    "tag key `{key}` has {keys} characters; {} tag keys have 1 to {}",
                    self.name(),
                    Self::MAX_KEY
                ));
            }
            if value.chars().count() > Self::MAX_VALUE {
                return Err(format!(
                    "the value of tag `{key}` is over the {} characters {} tags hold",
                    Self::MAX_VALUE,
                    self.name()
                ));
            }
            if self == TagRules::S3 && key.starts_with("aws:") {
                return Err(format!(
                    "tag key `{key}`: keys starting `aws:` are AWS's own"
                ));
            }
            if let Some(c) = key.chars().chain(value.chars()).find(|&c| !self.allows(c)) {
                return Err(format!(
                    "tag `{key}={value}` holds `{c}`, which {} tags cannot ({})",
                    self.name(),
                    match self {
                        TagRules::S3 => "letters, digits, spaces and _ . : / = + - @ only",
                        TagRules::Azure => "ASCII letters, digits, space and + - . / : = _ only",
                    }
                ));
            }
        }
        Ok(())
    }
}

/// `tags` as a query string (`k1=v1&k2=v2`, each part percent-encoded): the form S3's
/// `x-amz-tagging` and Azure's `x-ms-tags` take. None when there are no tags.
pub fn encode(tags: &Tags) -> Option<String> {
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    if tags.is_empty() {
        return None;
    }
    let pairs: Vec<String> = tags
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                utf8_percent_encode(k, NON_ALPHANUMERIC),
                utf8_percent_encode(v, NON_ALPHANUMERIC)
            )
        })
        .collect();
    Some(pairs.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tags(pairs: &[(&str, &str)]) -> Tags {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn each_destination_holds_what_its_reference_allows() {
        let common = tags(&[
            ("project", "blue"),
            ("cost-centre", "a/b:c=d+e_f.g h"),
            ("empty", ""),
        ]);
        assert_eq!(TagRules::S3.check(&common), Ok(()));
        assert_eq!(TagRules::Azure.check(&common), Ok(()));
        let at = tags(&[("owner", "ops@example.com")]);
        assert_eq!(TagRules::S3.check(&at), Ok(()));
        let why = TagRules::Azure.check(&at).expect_err("@");
        assert!(
            why.contains("`owner=ops@example.com`") && why.contains("`@`"),
            "{why}"
        );
        let unicode = tags(&[("équipe", "données")]);
        assert_eq!(TagRules::S3.check(&unicode), Ok(()));
        assert!(TagRules::Azure.check(&unicode).is_err());
        let eleven: Tags = (0..11).map(|i| (format!("k{i}"), String::new())).collect();
        for rules in [TagRules::S3, TagRules::Azure] {
            assert!(rules.check(&eleven).expect_err("11").contains("11 tags"));
            assert!(rules.check(&tags(&[("", "v")])).is_err(), "empty key");
            assert!(rules.check(&tags(&[(&"k".repeat(129), "v")])).is_err());
            assert_eq!(
                rules.check(&tags(&[(&"k".repeat(128), &"v".repeat(256))])),
                Ok(())
            );
            assert!(rules.check(&tags(&[("k", &"v".repeat(257))])).is_err());
        }
        assert!(TagRules::S3.check(&tags(&[("aws:x", "v")])).is_err());
        assert!(
            TagRules::S3.check(&tags(&[("k", "a\tb")])).is_err(),
            "no tabs"
        );
    }

    #[test]
    fn tags_travel_as_a_percent_encoded_query_string() {
        assert_eq!(encode(&Tags::new()), None);
        assert_eq!(
            encode(&tags(&[("b", "x y/z"), ("a", "1=2&3")])).as_deref(),
            Some("a=1%3D2%263&b=x%20y%2Fz")
        );
    }

    proptest! {
        /// Whatever Azure holds, S3 holds too (Azure's alphabet is a subset of S3's).
        #[test]
        fn what_azure_holds_s3_holds(
            pairs in proptest::collection::btree_map("[ -~]{0,130}", "[ -~]{0,260}", 0..12)
        ) {
            let pairs: Tags = pairs.into_iter().filter(|(k, _)| !k.starts_with("aws:")).collect();
            if TagRules::Azure.check(&pairs).is_ok() {
                prop_assert_eq!(TagRules::S3.check(&pairs), Ok(()));
            }
        }

        /// The encoded form reads back as the same tags.
        #[test]
        fn the_query_string_reads_back(
            pairs in proptest::collection::btree_map("\\PC{1,8}", "\\PC{0,8}", 0..4)
        ) {
            let decoded: Tags = encode(&pairs)
                .unwrap_or_default()
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').expect("k=v");
                    let text = |s: &str| {
                        percent_encoding::percent_decode_str(s).decode_utf8().expect("utf-8").to_string()
                    };
                    (text(k), text(v))
                })
                .collect();
            prop_assert_eq!(decoded, pairs);
        }
    }
}
