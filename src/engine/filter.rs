//! Which source objects a job takes: `--include` / `--exclude` globs. A pattern without `/`
//! matches an object's base name at any depth (`*.parquet`); a pattern with `/` matches its
//! path under the source prefix (`logs/2026-*/**`), where `*` stops at `/` and `**` crosses
//! it. An object is taken when it matches an include (or there are none) and no exclude.

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

use crate::location::Location;

/// Compiled include and exclude patterns.
#[derive(Clone, Debug)]
pub struct Filter {
    include_names: GlobSet,
    include_paths: GlobSet,
    exclude_names: GlobSet,
    exclude_paths: GlobSet,
    any_include: bool,
}

/// Splits patterns into those matched against base names and those matched against paths.
fn compile(patterns: &[String], flag: &str) -> anyhow::Result<(GlobSet, GlobSet)> {
    let (mut names, mut paths) = (GlobSetBuilder::new(), GlobSetBuilder::new());
    for pattern in patterns {
        let glob = |text: &str| -> anyhow::Result<Glob> {
            GlobBuilder::new(text)
                .literal_separator(true)
                .build()
                .map_err(|e| anyhow::anyhow!("{flag} `{pattern}` is not a valid glob: {e}"))
        };
        match pattern.strip_prefix('/') {
            Some(path) => paths.add(glob(path)?),
            None if pattern.contains('/') => paths.add(glob(pattern)?),
            None => names.add(glob(pattern)?),
        };
    }
    Ok((names.build()?, paths.build()?))
}

impl Filter {
    /// Compiles the patterns; a malformed one is an error naming it.
    pub fn new(include: &[String], exclude: &[String]) -> anyhow::Result<Self> {
        let (include_names, include_paths) = compile(include, "--include")?;
        let (exclude_names, exclude_paths) = compile(exclude, "--exclude")?;
        Ok(Self {
            include_names,
            include_paths,
            exclude_names,
            exclude_paths,
            any_include: !include.is_empty(),
        })
    }

    /// True when the object `key`, listed under `source`, is taken.
    pub fn admits(&self, source: &Location, key: &str) -> bool {
        let path = source.path_of(key);
        let name = path.rsplit('/').next().unwrap_or(path);
        let matches =
            |names: &GlobSet, paths: &GlobSet| names.is_match(name) || paths.is_match(path);
        if matches(&self.exclude_names, &self.exclude_paths) {
            return false;
        }
        !self.any_include || matches(&self.include_names, &self.include_paths)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(include: &[&str], exclude: &[&str]) -> Filter {
        let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Filter::new(&own(include), &own(exclude)).expect("valid")
    }

    #[test]
    fn names_match_at_any_depth_and_paths_from_the_prefix() {
        let src = Location::parse("s3://bkt/data/").expect("location");
        let f = filter(&["*.bin"], &[]);
        assert!(f.admits(&src, "data/a.bin"));
        assert!(f.admits(&src, "data/deep/er/a.bin"));
        assert!(!f.admits(&src, "data/a.txt"));

        let f = filter(&["logs/*.gz"], &[]);
        assert!(f.admits(&src, "data/logs/x.gz"));
        assert!(!f.admits(&src, "data/logs/old/x.gz"), "* stops at /");
        assert!(
            !f.admits(&src, "data/other/logs/x.gz"),
            "paths start at the prefix"
        );
        let f = filter(&["logs/**/*.gz"], &[]);
        assert!(f.admits(&src, "data/logs/old/x.gz"), "** crosses /");
    }

    #[test]
    fn excludes_win_and_no_include_takes_everything() {
        let src = Location::parse("s3://bkt/").expect("location");
        let f = filter(&[], &[]);
        assert!(f.admits(&src, "anything/at/all"));
        let f = filter(&["*.bin"], &["tmp/**", "*.partial.bin"]);
        assert!(f.admits(&src, "keep/a.bin"));
        assert!(!f.admits(&src, "tmp/a.bin"));
        assert!(!f.admits(&src, "keep/a.partial.bin"));
    }

    #[test]
    fn a_bad_pattern_is_named() {
        let err = Filter::new(&["a[".to_string()], &[]).expect_err("unclosed class");
        assert!(err.to_string().contains("--include `a[`"), "{err}");
    }
}
