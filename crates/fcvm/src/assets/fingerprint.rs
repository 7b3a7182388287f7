//! A memo of file hashes, so that a run whose guest inputs did not change costs a few `stat`s
//! instead of reading and hashing the agent, crun and its libraries (~15 MB) and running `ldd`.
//!
//! `assets/fingerprints.json` records, for every file hashed, its stat then (device, inode,
//! size, mtime and ctime to the nanosecond) and its sha256. A file whose stat is the same now
//! reuses that hash; any other is hashed again. The ctime makes this sound: every write, chmod
//! or rename sets it to the current time, and no user tool can set it back (`touch -d` and
//! `cp -p` only set mtime). As with git's "racy" index entries, a file changed less than
//! [`RACY`] before it was hashed is not recorded: timestamps come from a coarse clock, so a
//! write right after the hash (a cargo build still writing the agent) may not change them.
//!
//! It also keeps lists of paths derived from files (what `ldd` lists for crun), reused only
//! while those files and every listed path keep their stat: see [`Memo::paths`].
//!
//! Never an error: a missing, unreadable or corrupt memo is an empty one, and one that cannot
//! be saved only costs the next run a re-hash. Concurrent runs may both rewrite it; the last
//! rename wins, and either version is correct.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::util::{sha256_file, write_atomic};

/// The memo's name in the assets dir.
pub(super) const FILE: &str = "fingerprints.json";
/// Bump when the format or the meaning of an entry changes: older memos are then ignored.
const VERSION: u32 = 1;
/// A file changed more recently than this before it was hashed may change again without its
/// stat showing it, so its hash is not recorded.
const RACY: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Stat {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
}

/// The stat of `path` (symlinks followed: the file whose bytes are read).
fn stat(path: &Path) -> std::io::Result<Stat> {
    let m = std::fs::metadata(path)?;
    Ok(Stat {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime_ns: nanos(m.mtime(), m.mtime_nsec()),
        ctime_ns: nanos(m.ctime(), m.ctime_nsec()),
    })
}

/// Saturating: `touch -d` accepts dates an i64 of nanoseconds cannot hold.
fn nanos(secs: i64, nsec: i64) -> i64 {
    secs.saturating_mul(1_000_000_000).saturating_add(nsec)
}

#[derive(Debug, Serialize, Deserialize)]
struct Hashed {
    stat: Stat,
    sha256: String,
}

/// A list of paths computed from `inputs`; `None` records a file that did not exist.
#[derive(Debug, Serialize, Deserialize)]
struct Derived {
    inputs: Vec<(PathBuf, Option<Stat>)>,
    paths: Vec<(PathBuf, Option<Stat>)>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Data {
    version: u32,
    files: BTreeMap<PathBuf, Hashed>,
    derived: BTreeMap<String, Derived>,
}

pub(super) struct Memo {
    path: PathBuf,
    data: Data,
    /// Something was recorded: [`Memo::save`] writes the file.
    dirty: bool,
    /// [`RACY`]; tests trust files they have just written.
    racy: Duration,
}

impl Memo {
    /// The memo at `path`, or an empty one.
    pub fn load(path: PathBuf) -> Memo {
        let data = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Data>(&b).ok())
            .filter(|d| d.version == VERSION)
            .unwrap_or(Data {
                version: VERSION,
                ..Data::default()
            });
        Memo {
            path,
            data,
            dirty: false,
            racy: RACY,
        }
    }

    /// The sha256 of `path`'s content: the recorded one while its stat is unchanged.
    pub fn sha256(&mut self, path: &Path) -> std::io::Result<String> {
        let before = stat(path)?;
        if let Some(h) = self.data.files.get(path).filter(|h| h.stat == before) {
            return Ok(h.sha256.clone());
        }
        let sha256 = sha256_file(path)?;
        // Recorded only if the file stayed put while it was read, and is old enough that any
        // later write changes its stat.
        if stat(path).ok() == Some(before) && !self.is_racy(Some(before)) {
            let entry = Hashed {
                stat: before,
                sha256: sha256.clone(),
            };
            self.data.files.insert(path.to_path_buf(), entry);
            self.dirty = true;
        }
        Ok(sha256)
    }

    /// The paths `compute` returns, derived from the files `inputs` (under the name `key`,
    /// which must name everything else they depend on). Reused while every input and every
    /// returned path keeps its stat: for `ldd`, an upgraded library may need other ones.
    pub fn paths<E>(
        &mut self,
        key: &str,
        inputs: &[&Path],
        compute: impl FnOnce() -> Result<Vec<PathBuf>, E>,
    ) -> Result<Vec<PathBuf>, E> {
        let unchanged =
            |files: &[(PathBuf, Option<Stat>)]| files.iter().all(|(p, s)| stat(p).ok() == *s);
        if let Some(d) = self.data.derived.get(key) {
            let same_inputs = d.inputs.iter().map(|(p, _)| p).eq(inputs);
            if same_inputs && unchanged(&d.inputs) && unchanged(&d.paths) {
                return Ok(d.paths.iter().map(|(p, _)| p.clone()).collect());
            }
        }
        let stats = |files: &[&Path]| -> Vec<(PathBuf, Option<Stat>)> {
            files
                .iter()
                .map(|p| (p.to_path_buf(), stat(p).ok()))
                .collect()
        };
        // Inputs before computing: a change meanwhile shows at the next lookup.
        let inputs = stats(inputs);
        let paths = compute()?;
        let derived = Derived {
            inputs,
            paths: stats(&paths.iter().map(PathBuf::as_path).collect::<Vec<_>>()),
        };
        let mut all = derived.inputs.iter().chain(&derived.paths);
        if !all.any(|(_, s)| self.is_racy(*s)) {
            self.data.derived.insert(key.to_string(), derived);
            self.dirty = true;
        }
        Ok(paths)
    }

    /// Writes the memo if something was recorded (atomically: readers see the old or the new).
    pub fn save(mut self) {
        if !self.dirty {
            return;
        }
        // Files that are gone (an agent in a deleted worktree) would only make it grow.
        self.data.files.retain(|p, _| p.exists());
        let json = serde_json::to_vec(&self.data).map_err(std::io::Error::from);
        if let Err(e) = json.and_then(|j| write_atomic(&self.path, &j)) {
            tracing::debug!(path = %self.path.display(), "cannot save the hash memo: {e}");
        }
    }

    /// Whether a file changed (or claims to have) within `racy` of now.
    fn is_racy(&self, stat: Option<Stat>) -> bool {
        let Some(s) = stat else { return false };
        let cutoff = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_sub(self.racy);
        let cutoff = i64::try_from(cutoff.as_nanos()).unwrap_or(i64::MAX);
        s.mtime_ns.max(s.ctime_ns) > cutoff
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::sha256_hex;

    /// A memo that trusts files however recent: the tests' files were all just written.
    fn trusting(path: &Path) -> Memo {
        Memo {
            racy: Duration::ZERO,
            ..Memo::load(path.to_path_buf())
        }
    }

    /// Longer than a timestamp tick (a jiffy), so a rewrite gets a new ctime.
    fn next_tick() {
        std::thread::sleep(Duration::from_millis(50));
    }

    #[test]
    fn unchanged_file_reuses_the_recorded_hash() {
        let d = tempfile::tempdir().unwrap();
        let (memo_path, f) = (d.path().join(FILE), d.path().join("agent"));
        std::fs::write(&f, b"one").unwrap();
        let mut m = trusting(&memo_path);
        assert_eq!(m.sha256(&f).unwrap(), sha256_hex(b"one"));
        m.save();

        let mut m = trusting(&memo_path);
        m.data.files.get_mut(&f).unwrap().sha256 = "recorded".into();
        assert_eq!(m.sha256(&f).unwrap(), "recorded", "not re-hashed");
        assert!(!m.dirty);
    }

    #[test]
    fn content_change_is_seen_despite_same_size_and_mtime() {
        let d = tempfile::tempdir().unwrap();
        let (memo_path, f) = (d.path().join(FILE), d.path().join("agent"));
        std::fs::write(&f, b"one").unwrap();
        let mut m = trusting(&memo_path);
        m.sha256(&f).unwrap();
        m.save();

        let mtime = std::fs::metadata(&f).unwrap().modified().unwrap();
        next_tick();
        std::fs::write(&f, b"two").unwrap();
        let file = std::fs::File::options().write(true).open(&f).unwrap();
        file.set_modified(mtime).unwrap();
        drop(file);
        assert_eq!(std::fs::metadata(&f).unwrap().modified().unwrap(), mtime);

        let mut m = trusting(&memo_path);
        assert_eq!(m.sha256(&f).unwrap(), sha256_hex(b"two"));
        assert!(m.dirty, "the new hash is recorded");
    }

    #[test]
    fn corrupt_or_missing_memo_is_rebuilt() {
        let d = tempfile::tempdir().unwrap();
        let (memo_path, f) = (d.path().join("sub/memo.json"), d.path().join("agent"));
        std::fs::write(&f, b"one").unwrap();
        // Missing, in a directory that does not exist yet.
        let mut m = trusting(&memo_path);
        m.sha256(&f).unwrap();
        m.save();
        assert_eq!(trusting(&memo_path).data.files.len(), 1);

        for junk in [
            &b"{not json"[..],
            b"",
            br#"{"version":0,"files":{},"derived":{}}"#,
        ] {
            std::fs::write(&memo_path, junk).unwrap();
            let mut m = trusting(&memo_path);
            assert!(m.data.files.is_empty());
            assert_eq!(m.sha256(&f).unwrap(), sha256_hex(b"one"));
            m.save();
            assert_eq!(trusting(&memo_path).data.files.len(), 1, "rewritten");
        }
    }

    #[test]
    fn recently_changed_file_is_not_recorded() {
        let d = tempfile::tempdir().unwrap();
        let (memo_path, f) = (d.path().join(FILE), d.path().join("agent"));
        std::fs::write(&f, b"still being written").unwrap();
        let mut m = Memo::load(memo_path.clone());
        assert_eq!(m.sha256(&f).unwrap(), sha256_hex(b"still being written"));
        assert!(m.data.files.is_empty() && !m.dirty);
        m.save();
        assert!(!memo_path.exists());
    }

    /// Looks the derived list up; true if it had to be computed.
    fn computed(m: &mut Memo, inputs: &[&Path], lib: &Path) -> bool {
        let mut ran = false;
        let paths = m.paths("ldd", inputs, || {
            ran = true;
            Ok::<_, ()>(vec![lib.to_path_buf()])
        });
        assert_eq!(paths.unwrap(), [lib]);
        ran
    }

    #[test]
    fn derived_paths_follow_their_inputs_and_outputs() {
        let d = tempfile::tempdir().unwrap();
        let memo_path = d.path().join(FILE);
        let (exe, lib) = (d.path().join("crun"), d.path().join("libc.so"));
        let absent = d.path().join("ld.so.preload");
        std::fs::write(&exe, b"exe").unwrap();
        std::fs::write(&lib, b"lib").unwrap();
        let inputs = [exe.as_path(), absent.as_path()];

        let mut m = trusting(&memo_path);
        assert!(computed(&mut m, &inputs, &lib));
        assert!(!computed(&mut m, &inputs, &lib));
        next_tick();
        std::fs::write(&lib, b"new").unwrap(); // an upgraded library may need others
        assert!(computed(&mut m, &inputs, &lib));
        next_tick();
        std::fs::write(&exe, b"new").unwrap();
        assert!(computed(&mut m, &inputs, &lib));
        std::fs::write(&absent, b"").unwrap(); // a file that appears
        assert!(computed(&mut m, &inputs, &lib));
        assert!(computed(&mut m, &inputs[..1], &lib), "other inputs");
        m.save();
        assert!(!computed(&mut trusting(&memo_path), &inputs[..1], &lib));
    }
}
