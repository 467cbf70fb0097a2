//! The rules of `blobway check`, as pure functions: a merge of two listings in key order, and
//! the verdict on each pair from what the listings say (size, and the source version blobway
//! recorded with every object it copied).

use std::cmp::Ordering;
use std::iter::Peekable;

use serde::Serialize;

use crate::store::{DestObject, ObjectInfo, meta_keys};

/// One name, from one side or both.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pair<S, D> {
    /// Only the source has it.
    SourceOnly(S),
    /// Only the destination has it.
    DestOnly(D),
    /// Both have it.
    Both(S, D),
}

/// A listing whose keys did not increase: it cannot be merged as it is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the {side} listing is not in key order: `{after}` came after `{before}`")]
pub struct OutOfOrder {
    /// "source" or "destination".
    pub side: &'static str,
    /// The key listed first.
    pub before: String,
    /// The key listed after it, which does not sort after it.
    pub after: String,
}

/// Merges two listings, each in strictly increasing key order, into one sequence of names in
/// increasing order. A side whose keys do not increase ends the merge with [`OutOfOrder`].
pub fn merge<S, D, A, B>(source: A, destination: B) -> Merge<S, D, A::IntoIter, B::IntoIter>
where
    A: IntoIterator<Item = (String, S)>,
    B: IntoIterator<Item = (String, D)>,
{
    Merge {
        a: source.into_iter().peekable(),
        b: destination.into_iter().peekable(),
        last_a: None,
        last_b: None,
        failed: false,
    }
}

/// The merge of two listings (see [`merge`]).
pub struct Merge<S, D, A: Iterator<Item = (String, S)>, B: Iterator<Item = (String, D)>> {
    a: Peekable<A>,
    b: Peekable<B>,
    last_a: Option<String>,
    last_b: Option<String>,
    failed: bool,
}

impl<S, D, A, B> Merge<S, D, A, B>
where
    A: Iterator<Item = (String, S)>,
    B: Iterator<Item = (String, D)>,
{
    fn in_order(
        last: &mut Option<String>,
        key: &str,
        side: &'static str,
    ) -> Result<(), OutOfOrder> {
        if let Some(before) = last.as_deref()
            && key <= before
        {
            return Err(OutOfOrder {
                side,
                before: before.to_string(),
                after: key.to_string(),
            });
        }
        *last = Some(key.to_string());
        Ok(())
    }
}

impl<S, D, A, B> Iterator for Merge<S, D, A, B>
where
    A: Iterator<Item = (String, S)>,
    B: Iterator<Item = (String, D)>,
{
    type Item = Result<(String, Pair<S, D>), OutOfOrder>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let order = match (self.a.peek(), self.b.peek()) {
            (None, None) => return None,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((a, _)), Some((b, _))) => a.cmp(b),
        };
        let result = match order {
            Ordering::Less => self.a.next().map(|(key, s)| {
                Self::in_order(&mut self.last_a, &key, "source")
                    .map(|()| (key, Pair::SourceOnly(s)))
            }),
            Ordering::Greater => self.b.next().map(|(key, d)| {
                Self::in_order(&mut self.last_b, &key, "destination")
                    .map(|()| (key, Pair::DestOnly(d)))
            }),
            Ordering::Equal => match (self.a.next(), self.b.next()) {
                (Some((key, s)), Some((_, d))) => Some(
                    Self::in_order(&mut self.last_a, &key, "source")
                        .and_then(|()| Self::in_order(&mut self.last_b, &key, "destination"))
                        .map(|()| (key, Pair::Both(s, d))),
                ),
                _ => None,
            },
        };
        if matches!(result, Some(Err(_))) {
            self.failed = true;
        }
        result
    }
}

/// How an object was found identical.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Verified {
    /// Every byte read from both sides and compared.
    #[serde(rename = "bytes")]
    Bytes,
    /// Same size, and the destination records the very source version it was copied from.
    #[serde(rename = "size+version")]
    SizeAndVersion,
    /// Same size only: nothing records which source version the destination holds (copied by
    /// another tool); `--download` compares the bytes.
    #[serde(rename = "size")]
    SizeOnly,
}

impl Verified {
    /// As shown.
    pub fn label(self) -> &'static str {
        match self {
            Verified::Bytes => "bytes",
            Verified::SizeAndVersion => "size+version",
            Verified::SizeOnly => "size",
        }
    }
}

/// What the listings alone say of one name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listed {
    /// At the source only.
    Missing,
    /// At the destination only.
    Extra,
    /// The sizes differ.
    SizeDiffers {
        /// Bytes at the source.
        source: u64,
        /// Bytes at the destination.
        destination: u64,
    },
    /// Same size, but the destination was copied from another version of the source.
    VersionDiffers {
        /// The version the destination records.
        recorded: String,
        /// The source's version now.
        source: String,
    },
    /// Same size, and as far as the listings tell, the same object.
    Same(Verified),
}

/// The verdict the listings give on one name.
pub fn judge(source: Option<&ObjectInfo>, destination: Option<&DestObject>) -> Listed {
    match (source, destination) {
        (Some(_), None) | (None, None) => Listed::Missing,
        (None, Some(_)) => Listed::Extra,
        (Some(s), Some(d)) if s.size != d.size => Listed::SizeDiffers {
            source: s.size,
            destination: d.size,
        },
        (Some(s), Some(d)) => match d.meta.get(meta_keys::SOURCE_ETAG) {
            Some(recorded) if *recorded == s.etag => Listed::Same(Verified::SizeAndVersion),
            Some(recorded) => Listed::VersionDiffers {
                recorded: recorded.clone(),
                source: s.etag.clone(),
            },
            None => Listed::Same(Verified::SizeOnly),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    type Merged = Result<(String, Pair<u8, u8>), OutOfOrder>;

    fn keys(pairs: &[Merged]) -> Vec<String> {
        pairs
            .iter()
            .map(|p| p.as_ref().expect("in order").0.clone())
            .collect()
    }

    #[test]
    fn a_merge_pairs_equal_names_and_keeps_the_rest_in_order() {
        let source = vec![("a".to_string(), 1), ("c".into(), 3), ("d".into(), 4)];
        let destination = vec![("b".to_string(), 20), ("c".into(), 30), ("e".into(), 50)];
        let merged: Vec<_> = merge(source, destination).collect();
        assert_eq!(keys(&merged), ["a", "b", "c", "d", "e"]);
        assert_eq!(merged[2], Ok(("c".into(), Pair::Both(3, 30))));
        assert_eq!(merged[1], Ok(("b".into(), Pair::DestOnly(20))));
    }

    #[test]
    fn a_listing_out_of_order_is_named_and_ends_the_merge() {
        let source = vec![("b".to_string(), 1), ("a".into(), 2), ("c".into(), 3)];
        let merged: Vec<_> = merge(source, Vec::<(String, u8)>::new()).collect();
        assert_eq!(merged.len(), 2);
        let error = merged[1].clone().expect_err("out of order");
        assert_eq!(
            (error.side, error.before.as_str(), error.after.as_str()),
            ("source", "b", "a")
        );
        // A repeated key is out of order too.
        let twice = vec![("a".to_string(), 1), ("a".into(), 2)];
        let merged: Vec<_> = merge(Vec::<(String, u8)>::new(), twice).collect();
        assert_eq!(merged[1].clone().expect_err("repeated").side, "destination");
    }

    fn object(size: u64, etag: &str) -> ObjectInfo {
        ObjectInfo {
            key: "k".into(),
            size,
            etag: etag.into(),
            modified: None,
        }
    }

    fn copied(size: u64, from: Option<&str>) -> DestObject {
        DestObject {
            size,
            meta: from
                .map(|etag| (meta_keys::SOURCE_ETAG.to_string(), etag.to_string()))
                .into_iter()
                .collect(),
        }
    }

    #[test]
    fn verdicts_from_the_listings() {
        let v1 = object(10, "\"v1\"");
        assert_eq!(judge(Some(&v1), None), Listed::Missing);
        assert_eq!(judge(None, Some(&copied(10, None))), Listed::Extra);
        assert_eq!(
            judge(Some(&v1), Some(&copied(9, Some("\"v1\"")))),
            Listed::SizeDiffers {
                source: 10,
                destination: 9
            }
        );
        assert_eq!(
            judge(Some(&v1), Some(&copied(10, Some("\"v1\"")))),
            Listed::Same(Verified::SizeAndVersion)
        );
        assert_eq!(
            judge(Some(&v1), Some(&copied(10, None))),
            Listed::Same(Verified::SizeOnly)
        );
        assert!(matches!(
            judge(Some(&v1), Some(&copied(10, Some("\"v0\"")))),
            Listed::VersionDiffers { .. }
        ));
    }

    proptest! {
        /// Merging two sorted listings gives every name once, in order, paired exactly when
        /// both sides have it — as comparing the two key sets would.
        #[test]
        fn a_merge_is_the_union_of_the_key_sets(
            a in proptest::collection::btree_set("[a-c/]{0,4}", 0..30),
            b in proptest::collection::btree_set("[a-c/]{0,4}", 0..30),
        ) {
            let source: Vec<(String, u8)> = a.iter().map(|k| (k.clone(), 1)).collect();
            let destination: Vec<(String, u8)> = b.iter().map(|k| (k.clone(), 2)).collect();
            let merged: Vec<(String, Pair<u8, u8>)> = merge(source, destination)
                .collect::<Result<_, _>>()
                .expect("sorted input merges");
            let names: Vec<&String> = merged.iter().map(|(k, _)| k).collect();
            let union: BTreeSet<&String> = a.union(&b).collect();
            prop_assert_eq!(names, union.into_iter().collect::<Vec<_>>());
            for (key, pair) in &merged {
                let expected = match (a.contains(key), b.contains(key)) {
                    (true, true) => Pair::Both(1, 2),
                    (true, false) => Pair::SourceOnly(1),
                    _ => Pair::DestOnly(2),
                };
                prop_assert_eq!(pair, &expected);
            }
        }

        /// A listing that is not sorted is always caught, never merged silently.
        #[test]
        fn an_unsorted_listing_is_always_caught(
            keys in proptest::collection::vec("[a-c]{1,3}", 2..20),
        ) {
            let sorted: BTreeMap<&String, ()> = keys.iter().map(|k| (k, ())).collect();
            let strictly_increasing = sorted.len() == keys.len()
                && keys.windows(2).all(|w| w[0] < w[1]);
            let listing: Vec<(String, u8)> = keys.iter().map(|k| (k.clone(), 0)).collect();
            let caught = merge(listing, Vec::<(String, u8)>::new()).any(|r| r.is_err());
            prop_assert_eq!(caught, !strictly_increasing);
        }
    }
}
