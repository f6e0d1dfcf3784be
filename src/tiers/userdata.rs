//! The user-data tier: profiles, entitlements and preferences, held in the user's home
//! region.
//!
//! * [`UserStore`] is where a home region keeps its users: [`RedbStore`] (embedded, the
//!   default: one file in the node's state directory) or [`PgStore`] (PostgreSQL, the
//!   database each region runs in production).
//! * A profile has personal fields (`name`, `email`) and the fields features need
//!   (entitlements, preferences). [`UserProfile::view`] drops the personal ones: that
//!   [`UserView`] is all another region may hold, in memory, for `cache_ttl_s`.
//! * [`UserTier`] puts it together for one node: reads served from the home store, or from
//!   the cache, or fetched from the home region; writes from elsewhere are sent back to the
//!   home region; [`UserTier::forget`] erases a user at home and in every cached view.
//!
//! Data minimization: the profile holds nothing beyond what a feature uses (a display
//! name and a contact address, the entitlements the gateway checks, preferences the
//! dashboard and clients read); anything else is refused at the edge (unknown fields).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::TierError;

/// The `[userdata]` section of a node's configuration.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserDataConfig {
    /// `redb` (default: `<state_dir>/userdata.redb`) or `postgres`.
    #[serde(default)]
    pub backend: Backend,
    /// For `postgres`: a connection string (`host=... user=... dbname=...` or a URL).
    #[serde(default)]
    pub postgres_url: Option<String>,
    /// How long another region may keep a user's cached view, in seconds. Default 60.
    #[serde(default = "default_ttl")]
    pub cache_ttl_s: u64,
}

fn default_ttl() -> u64 {
    60
}

/// Where a home region keeps its users.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Embedded redb file.
    #[default]
    Redb,
    /// PostgreSQL.
    Postgres,
}

impl UserDataConfig {
    /// Collects every problem, prefixed with its TOML path.
    pub fn validate(&self, problems: &mut Vec<String>) {
        if self.backend == Backend::Postgres && self.postgres_url.as_deref().is_none_or(str::is_empty) {
            problems.push(
                "userdata.backend = \"postgres\" needs userdata.postgres_url (e.g. \"host=db user=tickmesh dbname=users\")"
                    .into(),
            );
        }
        if !(1..=86_400).contains(&self.cache_ttl_s) {
            problems.push(format!("userdata.cache_ttl_s = {} is out of range; use 1 to 86400", self.cache_ttl_s));
        }
    }
}

/// What a user may subscribe to (the same shape as a token's grants).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entitlements {
    /// Channels, e.g. `["trades", "book", "orders"]`.
    #[serde(default)]
    pub channels: Vec<String>,
    /// Symbols or prefix patterns, e.g. `["AAPL", "BTC-*"]`.
    #[serde(default)]
    pub symbols: Vec<String>,
}

/// A user as the home region stores it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserProfile {
    /// The user id (the token `sub`): a pseudonymous key, not personal data by itself.
    pub id: String,
    /// The home region: the only region that stores this profile.
    pub home: String,
    /// Display name (personal data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Contact e-mail (personal data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// What the user may subscribe to.
    #[serde(default)]
    pub entitlements: Entitlements,
    /// Feature settings (non-personal), e.g. `{"book_depth": "10"}`.
    #[serde(default)]
    pub preferences: BTreeMap<String, String>,
}

/// The fields another region may hold: no personal data.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UserView {
    /// The user id.
    pub id: String,
    /// The home region.
    pub home: String,
    /// Entitlements.
    pub entitlements: Entitlements,
    /// Preferences.
    pub preferences: BTreeMap<String, String>,
}

impl UserProfile {
    /// The PII-free view.
    pub fn view(&self) -> UserView {
        UserView {
            id: self.id.clone(),
            home: self.home.clone(),
            entitlements: self.entitlements.clone(),
            preferences: self.preferences.clone(),
        }
    }

    /// Checks the fields; the message says what to change.
    pub fn validate(&self) -> Result<(), TierError> {
        let bad = |m: String| Err(TierError::Invalid(m));
        if self.id.is_empty() || self.id.len() > 24 || !self.id.bytes().all(|b| b.is_ascii_graphic()) {
            return bad(format!("user id {:?} must be 1 to 24 printable ASCII characters", self.id));
        }
        if self.home.is_empty() {
            return bad(format!("user {}: home region is empty; name the region that stores the user", self.id));
        }
        if self.name.as_ref().is_some_and(|n| n.len() > 200) {
            return bad(format!("user {}: name is longer than 200 bytes", self.id));
        }
        if self.email.as_ref().is_some_and(|e| e.len() > 254 || !e.contains('@')) {
            return bad(format!("user {}: email must be an address like name@example.com", self.id));
        }
        if self.preferences.len() > 64 || self.preferences.iter().any(|(k, v)| k.len() > 64 || v.len() > 1024) {
            return bad(format!(
                "user {}: at most 64 preferences, keys up to 64 bytes, values up to 1024 bytes",
                self.id
            ));
        }
        Ok(())
    }
}

/// Where a home region keeps its users.
pub trait UserStore: Send + Sync + 'static {
    /// The user, if stored.
    fn get(&self, id: &str) -> Result<Option<UserProfile>, TierError>;
    /// Creates or replaces a user.
    fn put(&self, p: &UserProfile) -> Result<(), TierError>;
    /// Erases a user; true if there was one.
    fn delete(&self, id: &str) -> Result<bool, TierError>;
    /// Every stored user id.
    fn ids(&self) -> Result<Vec<String>, TierError>;
}

const USERS: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("users");

fn store_err(e: impl std::fmt::Display) -> TierError {
    TierError::Store(e.to_string())
}

/// The embedded store: one redb file.
#[derive(Debug)]
pub struct RedbStore {
    /// Behind a mutex because compaction (after an erasure) needs the database exclusively.
    db: Mutex<redb::Database>,
}

impl RedbStore {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<RedbStore, TierError> {
        let db = redb::Database::create(path).map_err(|e| {
            TierError::Store(format!("opening {}: {e}; check the path and its permissions", path.display()))
        })?;
        let w = db.begin_write().map_err(store_err)?;
        w.open_table(USERS).map_err(store_err)?;
        w.commit().map_err(store_err)?;
        Ok(RedbStore { db: Mutex::new(db) })
    }
}

impl RedbStore {
    fn db(&self) -> std::sync::MutexGuard<'_, redb::Database> {
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl UserStore for RedbStore {
    fn get(&self, id: &str) -> Result<Option<UserProfile>, TierError> {
        use redb::ReadableDatabase;
        let r = self.db().begin_read().map_err(store_err)?;
        let t = r.open_table(USERS).map_err(store_err)?;
        match t.get(id).map_err(store_err)? {
            Some(v) => Ok(Some(serde_json::from_slice(v.value()).map_err(store_err)?)),
            None => Ok(None),
        }
    }

    fn put(&self, p: &UserProfile) -> Result<(), TierError> {
        p.validate()?;
        let bytes = serde_json::to_vec(p).map_err(store_err)?;
        let w = self.db().begin_write().map_err(store_err)?;
        {
            let mut t = w.open_table(USERS).map_err(store_err)?;
            t.insert(p.id.as_str(), bytes.as_slice()).map_err(store_err)?;
        }
        w.commit().map_err(store_err)
    }

    fn delete(&self, id: &str) -> Result<bool, TierError> {
        let mut db = self.db();
        let existed = {
            let w = db.begin_write().map_err(store_err)?;
            let existed = {
                let mut t = w.open_table(USERS).map_err(store_err)?;
                let removed = t.remove(id).map_err(store_err)?.is_some();
                removed
            };
            w.commit().map_err(store_err)?;
            existed
        };
        // The freed pages may still hold the old bytes: compact so an erased user's personal
        // data does not linger in the file (the PII scan test checks the file's bytes).
        db.compact().map_err(store_err)?;
        Ok(existed)
    }

    fn ids(&self) -> Result<Vec<String>, TierError> {
        use redb::{ReadableDatabase, ReadableTable};
        let r = self.db().begin_read().map_err(store_err)?;
        let t = r.open_table(USERS).map_err(store_err)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(store_err)? {
            let (k, _) = item.map_err(store_err)?;
            out.push(k.value().to_owned());
        }
        Ok(out)
    }
}

/// The PostgreSQL store: table `tickmesh_users (id text primary key, home text, profile jsonb)`.
pub struct PgStore {
    client: Mutex<postgres::Client>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects (no TLS: run it on the region's private network or a local socket) and
    /// creates the table if it is missing.
    pub fn connect(url: &str) -> Result<PgStore, TierError> {
        let mut client = postgres::Client::connect(url, postgres::NoTls).map_err(|e| {
            TierError::Store(format!(
                "connecting to PostgreSQL: {e}; check userdata.postgres_url and that the server runs"
            ))
        })?;
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS tickmesh_users (id text PRIMARY KEY, home text NOT NULL, profile text NOT NULL)",
            )
            .map_err(store_err)?;
        Ok(PgStore { client: Mutex::new(client) })
    }

    fn client(&self) -> std::sync::MutexGuard<'_, postgres::Client> {
        self.client.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl UserStore for PgStore {
    fn get(&self, id: &str) -> Result<Option<UserProfile>, TierError> {
        let row =
            self.client().query_opt("SELECT profile FROM tickmesh_users WHERE id = $1", &[&id]).map_err(store_err)?;
        match row {
            Some(r) => {
                let text: String = r.try_get(0).map_err(store_err)?;
                Ok(Some(serde_json::from_str(&text).map_err(store_err)?))
            }
            None => Ok(None),
        }
    }

    fn put(&self, p: &UserProfile) -> Result<(), TierError> {
        p.validate()?;
        let text = serde_json::to_string(p).map_err(store_err)?;
        self.client()
            .execute(
                "INSERT INTO tickmesh_users (id, home, profile) VALUES ($1, $2, $3) \
                 ON CONFLICT (id) DO UPDATE SET home = EXCLUDED.home, profile = EXCLUDED.profile",
                &[&p.id, &p.home, &text],
            )
            .map_err(store_err)?;
        Ok(())
    }

    fn delete(&self, id: &str) -> Result<bool, TierError> {
        let n = self.client().execute("DELETE FROM tickmesh_users WHERE id = $1", &[&id]).map_err(store_err)?;
        Ok(n > 0)
    }

    fn ids(&self) -> Result<Vec<String>, TierError> {
        let rows = self.client().query("SELECT id FROM tickmesh_users ORDER BY id", &[]).map_err(store_err)?;
        rows.iter().map(|r| r.try_get::<_, String>(0).map_err(store_err)).collect()
    }
}

/// The contract every [`UserStore`] backend keeps, as a check to run against a fresh, empty
/// store (the unit tests run it on [`RedbStore`], `tests/userdata_pg.rs` on [`PgStore`]
/// against a real PostgreSQL server): profiles, entitlements and preferences round-trip
/// exactly, replacing keeps one copy, erasure is idempotent, invalid profiles are refused
/// before they are stored. The error names the first broken expectation.
pub fn conformance(s: &dyn UserStore) -> Result<(), String> {
    macro_rules! expect {
        ($cond:expr, $($msg:tt)*) => {
            if !$cond {
                return Err(format!($($msg)*));
            }
        };
    }
    let e = |e: TierError| e.to_string();
    let carol = UserProfile {
        id: "carol".into(),
        home: "us-east-1".into(),
        name: Some("Carol Conformance".into()),
        email: Some("carol@example.com".into()),
        entitlements: Entitlements { channels: vec!["trades".into(), "orders".into()], symbols: vec!["BTC-*".into()] },
        preferences: BTreeMap::from([("book_depth".to_owned(), "10".to_owned())]),
    };
    expect!(s.get("carol").map_err(e)?.is_none(), "a fresh store already holds carol");
    expect!(s.ids().map_err(e)?.is_empty(), "a fresh store lists users");
    s.put(&carol).map_err(e)?;
    let got = s.get("carol").map_err(e)?;
    expect!(got.as_ref() == Some(&carol), "profile did not round-trip: stored {carol:?}, read {got:?}");
    // Entitlements and preferences are replaced as a whole (no merge with old values).
    let mut c2 = carol.clone();
    c2.entitlements = Entitlements { channels: vec!["book".into()], symbols: vec!["AAPL".into()] };
    c2.preferences = BTreeMap::from([("theme".to_owned(), "dark".to_owned())]);
    s.put(&c2).map_err(e)?;
    let got = s.get("carol").map_err(e)?;
    expect!(got.as_ref() == Some(&c2), "replacement did not round-trip: stored {c2:?}, read {got:?}");
    // A user without personal fields stores none.
    let dave = UserProfile { id: "dave".into(), name: None, email: None, ..carol.clone() };
    s.put(&dave).map_err(e)?;
    expect!(s.get("dave").map_err(e)? == Some(dave.clone()), "a profile without personal data did not round-trip");
    let ids = s.ids().map_err(e)?;
    expect!(ids == vec!["carol".to_owned(), "dave".to_owned()], "ids() lists {ids:?}, want carol and dave once each");
    // Erasure: gone, and a second erasure says there was nothing.
    expect!(s.delete("carol").map_err(e)?, "delete(carol) reported no user");
    expect!(!s.delete("carol").map_err(e)?, "a second delete(carol) reported a user");
    expect!(s.get("carol").map_err(e)?.is_none(), "carol is still readable after delete");
    expect!(s.ids().map_err(e)? == vec!["dave".to_owned()], "carol is still listed after delete");
    // Data minimization at the edge: an invalid profile is refused and not stored.
    let bad = UserProfile { id: "erin".into(), email: Some("not-an-address".into()), ..carol.clone() };
    match s.put(&bad) {
        Err(TierError::Invalid(m)) => expect!(m.contains("email must be an address"), "unexpected refusal: {m}"),
        other => return Err(format!("an invalid e-mail was not refused: {other:?}")),
    }
    expect!(s.get("erin").map_err(e)?.is_none(), "a refused profile was stored");
    let long = UserProfile { id: "x".repeat(25), ..carol };
    expect!(matches!(s.put(&long), Err(TierError::Invalid(_))), "a 25-character id was not refused");
    expect!(s.delete("dave").map_err(e)?, "delete(dave) reported no user");
    expect!(s.ids().map_err(e)?.is_empty(), "the store is not empty after erasing every user");
    Ok(())
}

/// How this node reaches another region's user-data API (the node wires HTTP here).
pub trait HomeClient: Send + Sync + 'static {
    /// Fetches the PII-free view of `id` from its home region.
    fn fetch_view(&self, home: &str, id: &str) -> Result<Option<UserView>, TierError>;
    /// Sends new preferences to the home region (write-back).
    fn put_preferences(&self, home: &str, id: &str, prefs: &BTreeMap<String, String>) -> Result<(), TierError>;
    /// Tells `region` to drop its cached view of `id`.
    fn drop_cached(&self, region: &str, id: &str) -> Result<(), TierError>;
}

/// Something worth the audit trail: an erasure, a view sent to another region.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UserDataEvent {
    /// `forget`, `forget_cached`, `view_sent`, `preferences_written_back`.
    pub action: &'static str,
    /// The user.
    pub user: String,
    /// Where the data was (or went).
    pub region: String,
    /// What happened.
    pub outcome: String,
}

/// Receives user-data events (the node writes them to its audit log).
pub type UserAudit = Arc<dyn Fn(UserDataEvent) + Send + Sync>;

/// The user-data tier of one node.
pub struct UserTier {
    region: String,
    others: Vec<String>,
    store: Arc<dyn UserStore>,
    home: Arc<dyn HomeClient>,
    audit: UserAudit,
    ttl: Duration,
    cache: Mutex<HashMap<String, (UserView, Instant)>>,
}

impl std::fmt::Debug for UserTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserTier").field("region", &self.region).finish_non_exhaustive()
    }
}

/// What [`UserTier::forget`] did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ForgetReport {
    /// The user.
    pub user: String,
    /// The profile was in the home store and is erased.
    pub erased_at_home: bool,
    /// Regions that dropped their cached view (or had none).
    pub caches_cleared: Vec<String>,
    /// Regions that could not be reached, with the reason: run the command again.
    pub failed: Vec<(String, String)>,
}

impl UserTier {
    /// A tier for `region`, whose peers are `others`, storing its users in `store`.
    pub fn new(
        region: impl Into<String>,
        others: Vec<String>,
        store: Arc<dyn UserStore>,
        home: Arc<dyn HomeClient>,
        audit: UserAudit,
        ttl: Duration,
    ) -> UserTier {
        UserTier { region: region.into(), others, store, home, audit, ttl, cache: Mutex::new(HashMap::new()) }
    }

    /// This region.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// Creates or replaces a user homed here.
    pub fn put(&self, p: &UserProfile) -> Result<(), TierError> {
        p.validate()?;
        if p.home != self.region {
            return Err(TierError::NotHome { user: p.id.clone(), home: p.home.clone(), here: self.region.clone() });
        }
        self.store.put(p)
    }

    /// The full profile of a user homed here (with personal data: only the home region
    /// answers this).
    pub fn profile(&self, id: &str) -> Result<UserProfile, TierError> {
        self.store.get(id)?.ok_or_else(|| TierError::UnknownUser(id.to_owned()))
    }

    /// The PII-free view, for a peer region that asks (recorded in the audit trail).
    pub fn view_for_peer(&self, id: &str, peer: &str) -> Result<Option<UserView>, TierError> {
        let v = self.store.get(id)?.map(|p| p.view());
        if v.is_some() {
            (self.audit)(UserDataEvent {
                action: "view_sent",
                user: id.to_owned(),
                region: peer.to_owned(),
                outcome: "PII-free view sent".into(),
            });
        }
        Ok(v)
    }

    /// The user's view: from the home store, else the unexpired cache, else the home
    /// region `home` (then cached for the TTL).
    pub fn view(&self, id: &str, home: &str) -> Result<UserView, TierError> {
        if let Some(p) = self.store.get(id)? {
            return Ok(p.view());
        }
        if home == self.region {
            return Err(TierError::UnknownUser(id.to_owned()));
        }
        let now = Instant::now();
        {
            let mut c = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            match c.get(id) {
                Some((v, at)) if now.duration_since(*at) < self.ttl => return Ok(v.clone()),
                Some(_) => {
                    c.remove(id);
                }
                None => {}
            }
        }
        let v = self.home.fetch_view(home, id)?.ok_or_else(|| TierError::UnknownUser(id.to_owned()))?;
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).insert(id.to_owned(), (v.clone(), now));
        Ok(v)
    }

    /// Sets preferences: stored here if the user is homed here, else written back to the
    /// home region (and the cached view dropped, so the next read sees the new values).
    pub fn set_preferences(&self, id: &str, home: &str, prefs: BTreeMap<String, String>) -> Result<(), TierError> {
        if let Some(mut p) = self.store.get(id)? {
            p.preferences = prefs;
            return self.store.put(&p);
        }
        if home == self.region {
            return Err(TierError::UnknownUser(id.to_owned()));
        }
        self.home.put_preferences(home, id, &prefs)?;
        self.drop_cached(id);
        (self.audit)(UserDataEvent {
            action: "preferences_written_back",
            user: id.to_owned(),
            region: home.to_owned(),
            outcome: "sent to the home region".into(),
        });
        Ok(())
    }

    /// Drops this region's cached view of `id` (a home region's `forget` calls this).
    pub fn drop_cached(&self, id: &str) -> bool {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).remove(id).is_some()
    }

    /// Whether a view of `id` is cached here (for tests and `/v1/users/{id}/cache`).
    pub fn is_cached(&self, id: &str) -> bool {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).contains_key(id)
    }

    /// Erases a user homed here, then every other region's cached view; every step is
    /// audited. A region that cannot be reached is listed in `failed`: run it again.
    pub fn forget(&self, id: &str) -> Result<ForgetReport, TierError> {
        let Some(p) = self.store.get(id)? else {
            return Err(TierError::UnknownUser(id.to_owned()));
        };
        if p.home != self.region {
            return Err(TierError::NotHome { user: id.to_owned(), home: p.home, here: self.region.clone() });
        }
        let erased = self.store.delete(id)?;
        (self.audit)(UserDataEvent {
            action: "forget",
            user: id.to_owned(),
            region: self.region.clone(),
            outcome: if erased { "profile erased".into() } else { "no profile".into() },
        });
        let mut report = ForgetReport {
            user: id.to_owned(),
            erased_at_home: erased,
            caches_cleared: Vec::new(),
            failed: Vec::new(),
        };
        for r in &self.others {
            match self.home.drop_cached(r, id) {
                Ok(()) => {
                    (self.audit)(UserDataEvent {
                        action: "forget_cached",
                        user: id.to_owned(),
                        region: r.clone(),
                        outcome: "cached view dropped".into(),
                    });
                    report.caches_cleared.push(r.clone());
                }
                Err(e) => {
                    (self.audit)(UserDataEvent {
                        action: "forget_cached",
                        user: id.to_owned(),
                        region: r.clone(),
                        outcome: format!("failed: {e}"),
                    });
                    report.failed.push((r.clone(), e.to_string()));
                }
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn alice() -> UserProfile {
        UserProfile {
            id: "alice".into(),
            home: "us-east-1".into(),
            name: Some("Alice Example".into()),
            email: Some("alice@example.com".into()),
            entitlements: Entitlements { channels: vec!["trades".into(), "orders".into()], symbols: vec!["*".into()] },
            preferences: BTreeMap::from([("book_depth".to_owned(), "10".to_owned())]),
        }
    }

    /// A home client that answers from another tier directly (no HTTP), counting calls.
    struct Direct {
        home: Mutex<Option<Arc<UserTier>>>,
        fetches: std::sync::atomic::AtomicU32,
    }

    impl HomeClient for Direct {
        fn fetch_view(&self, _home: &str, id: &str) -> Result<Option<UserView>, TierError> {
            self.fetches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let h = self.home.lock().unwrap().clone().unwrap();
            h.view_for_peer(id, "eu-west-1")
        }
        fn put_preferences(&self, _home: &str, id: &str, prefs: &BTreeMap<String, String>) -> Result<(), TierError> {
            let h = self.home.lock().unwrap().clone().unwrap();
            h.set_preferences(id, "us-east-1", prefs.clone())
        }
        fn drop_cached(&self, region: &str, _id: &str) -> Result<(), TierError> {
            if region == "ap-southeast-1" {
                Err(TierError::Store("connection refused".into()))
            } else {
                Ok(())
            }
        }
    }

    pub(crate) fn store_contract(s: &dyn UserStore) {
        assert_eq!(s.get("alice").unwrap(), None);
        s.put(&alice()).unwrap();
        assert_eq!(s.get("alice").unwrap(), Some(alice()));
        let mut a2 = alice();
        a2.preferences.insert("theme".into(), "dark".into());
        s.put(&a2).unwrap();
        assert_eq!(s.get("alice").unwrap(), Some(a2));
        s.put(&UserProfile { id: "bob".into(), name: None, email: None, ..alice() }).unwrap();
        assert_eq!(s.ids().unwrap(), vec!["alice".to_owned(), "bob".to_owned()]);
        assert!(s.delete("alice").unwrap());
        assert!(!s.delete("alice").unwrap());
        assert_eq!(s.get("alice").unwrap(), None);
        let bad = UserProfile { email: Some("not-an-address".into()), ..alice() };
        assert!(s.put(&bad).unwrap_err().to_string().contains("email must be an address"));
    }

    #[test]
    fn redb_store_passes_the_conformance_check() {
        let dir = tempfile::tempdir().unwrap();
        conformance(&RedbStore::open(&dir.path().join("users.redb")).unwrap()).unwrap();
    }

    #[test]
    fn redb_store_keeps_and_erases_users() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.redb");
        store_contract(&RedbStore::open(&path).unwrap());
        // Reopened: what was stored is still there.
        let s = RedbStore::open(&path).unwrap();
        assert_eq!(s.ids().unwrap(), vec!["bob".to_owned()]);
        // Erased means erased: the file held alice's personal data, and after the erasure
        // it no longer does.
        let has = |needle: &[u8]| {
            let bytes = std::fs::read(&path).unwrap();
            bytes.windows(needle.len()).any(|w| w == needle)
        };
        s.put(&alice()).unwrap();
        assert!(has(b"alice@example.com"), "the profile is stored in the file");
        assert!(s.delete("alice").unwrap());
        assert!(!has(b"Alice Example") && !has(b"alice@example.com"), "erased personal data left in the redb file");
    }

    #[test]
    fn views_carry_no_personal_data_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let ev = events.clone();
        let audit: UserAudit = Arc::new(move |e| ev.lock().unwrap().push(e));
        let direct = Arc::new(Direct { home: Mutex::new(None), fetches: Default::default() });
        let home_store = Arc::new(RedbStore::open(&dir.path().join("use1.redb")).unwrap());
        let home = Arc::new(UserTier::new(
            "us-east-1",
            vec!["eu-west-1".into(), "ap-southeast-1".into()],
            home_store,
            direct.clone(),
            audit.clone(),
            Duration::from_secs(60),
        ));
        *direct.home.lock().unwrap() = Some(home.clone());
        let eu_store = Arc::new(RedbStore::open(&dir.path().join("euw1.redb")).unwrap());
        let eu = UserTier::new("eu-west-1", vec![], eu_store.clone(), direct.clone(), audit, Duration::from_millis(50));

        assert!(matches!(eu.put(&alice()), Err(TierError::NotHome { .. })));
        home.put(&alice()).unwrap();
        let v = eu.view("alice", "us-east-1").unwrap();
        assert_eq!(v, alice().view());
        let json = serde_json::to_string(&v).unwrap();
        assert!(!json.contains("alice@example.com") && !json.contains("Alice Example"), "{json}");
        eu.view("alice", "us-east-1").unwrap();
        assert_eq!(direct.fetches.load(std::sync::atomic::Ordering::Relaxed), 1, "second read from cache");
        std::thread::sleep(Duration::from_millis(80));
        eu.view("alice", "us-east-1").unwrap();
        assert_eq!(direct.fetches.load(std::sync::atomic::Ordering::Relaxed), 2, "expired view refetched");
        assert!(eu_store.ids().unwrap().is_empty(), "another region never stores the profile");

        // Write-back: preferences set in eu-west-1 land at home.
        eu.set_preferences("alice", "us-east-1", BTreeMap::from([("theme".to_owned(), "dark".to_owned())])).unwrap();
        assert!(!eu.is_cached("alice"));
        assert_eq!(home.profile("alice").unwrap().preferences.get("theme").map(String::as_str), Some("dark"));

        // Forget: erased at home, caches told, the unreachable region reported, all audited.
        eu.view("alice", "us-east-1").unwrap();
        assert!(matches!(eu.forget("alice"), Err(TierError::UnknownUser(_))));
        let r = home.forget("alice").unwrap();
        assert!(r.erased_at_home);
        assert_eq!(r.caches_cleared, vec!["eu-west-1".to_owned()]);
        assert_eq!(r.failed.len(), 1);
        assert!(matches!(home.profile("alice"), Err(TierError::UnknownUser(_))));
        let ev = events.lock().unwrap();
        let actions: Vec<&str> = ev.iter().map(|e| e.action).collect();
        assert!(actions.contains(&"forget") && actions.contains(&"view_sent"), "{actions:?}");
        assert_eq!(actions.iter().filter(|a| **a == "forget_cached").count(), 2);
    }

    #[test]
    fn config_problems_say_what_to_set() {
        let mut p = Vec::new();
        UserDataConfig { backend: Backend::Postgres, postgres_url: None, cache_ttl_s: 0 }.validate(&mut p);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("needs userdata.postgres_url"));
    }
}
