//! E2B's defaults for a call that names no user or directory: in E2B a command runs as
//! `user` in its home, `/home/user`, and a file call acts as `user` (relative paths against
//! that home). fcvm does the same where the template's image has a `user` account
//! (`builtin:base` does); elsewhere a command keeps the image's user and working directory,
//! and a file call acts as root, as before (docs/serve.md).
//!
//! Whether the image has the account, and each account's home, come from the container's
//! `/etc/passwd`, read once per template through an agent file request and kept for the
//! server's life (one small entry per template, a fixed set).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use fcvm_proto::{FsOp, FsReply, MAX_CHUNK};

use super::sandbox::Sandbox;

/// E2B's default account.
pub const E2B_USER: &str = "user";

/// The accounts of a template's image: name → home.
#[derive(Debug, Default)]
pub struct Accounts {
    homes: HashMap<String, String>,
}

impl Accounts {
    pub fn parse(passwd: &str) -> Accounts {
        let homes = passwd
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                Some((f.first()?.to_string(), f.get(5)?.to_string()))
            })
            .collect();
        Accounts { homes }
    }

    /// Whether E2B's defaults apply (the image has E2B's account).
    pub fn e2b_like(&self) -> bool {
        self.homes.contains_key(E2B_USER)
    }

    /// The user of a call that named `named` (empty: none).
    pub fn user(&self, named: &str) -> String {
        match named {
            "" if self.e2b_like() => E2B_USER.to_string(),
            n => n.to_string(),
        }
    }

    /// The directory of a command of `user` that named none: the user's home where E2B's
    /// defaults apply (None keeps the image's working directory).
    pub fn cwd(&self, user: &str) -> Option<String> {
        if !self.e2b_like() {
            return None;
        }
        let name = user.split(':').next().unwrap_or("");
        let name = if name.is_empty() { "root" } else { name };
        self.homes.get(name).cloned()
    }
}

/// The accounts of `sbx`'s template (read from its container the first time).
pub async fn accounts(sbx: &Sandbox) -> Arc<Accounts> {
    static CACHE: Mutex<Option<HashMap<String, Arc<Accounts>>>> = Mutex::new(None);
    let cached = |c: &mut Option<HashMap<String, Arc<Accounts>>>| {
        c.get_or_insert_with(HashMap::new)
            .get(&sbx.template_id)
            .cloned()
    };
    if let Some(a) = cached(&mut CACHE.lock().expect("accounts")) {
        return a;
    }
    let op = FsOp::Read {
        path: "/etc/passwd".into(),
        offset: 0,
        len: MAX_CHUNK as u32,
    };
    let a = match sbx.vm.session.fs("", op).await {
        Ok(FsReply::Data { data, .. }) => {
            Arc::new(Accounts::parse(&String::from_utf8_lossy(&data)))
        }
        // Not cached: the next call asks again.
        _ => return Arc::default(),
    };
    let mut c = CACHE.lock().expect("accounts");
    c.get_or_insert_with(HashMap::new)
        .entry(sbx.template_id.clone())
        .or_insert(a)
        .clone()
}

/// The user of a file call that named `named` (E2B's `user` by default, where it exists).
pub async fn file_user(sbx: &Sandbox, named: &str) -> String {
    accounts(sbx).await.user(named)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e2bs_defaults_only_where_the_image_has_its_account() {
        let e2b = Accounts::parse(
            "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/bash\n",
        );
        assert_eq!(e2b.user(""), "user");
        assert_eq!(e2b.user("root"), "root");
        assert_eq!(e2b.cwd("user").as_deref(), Some("/home/user"));
        assert_eq!(e2b.cwd("root:root").as_deref(), Some("/root"));
        assert_eq!(e2b.cwd("nobody"), None);
        let plain = Accounts::parse("root:x:0:0:root:/root:/bin/sh\nbad line\n");
        assert_eq!(plain.user(""), "");
        assert_eq!(plain.cwd("root"), None);
    }
}
