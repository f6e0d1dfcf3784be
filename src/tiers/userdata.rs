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
//! * Other regions are reached over the mesh ([`MeshHome`], the mesh's user-data request
//!   channel): the residency policy checks every message on both sides (personal data
//!   moves only toward its home region; the view moves like market data) and both audit
//!   trails record it. Erasures are entries of the same hash-chained trail, naming the
//!   user only by a pseudonym.
//!
//! Data minimization: the profile holds nothing beyond what a feature uses (a display
//! name and a contact address, the entitlements the gateway checks, preferences the
//! dashboard and clients read); anything else is refused at the edge (unknown fields).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::TierError;
use tickmesh_replicate::{user_pseudonym, DataClass, Direction, EntryKind, UserDataRecord, UserMessage};

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

/// The fields another region may hold: no personal data. Unknown fields are refused, so
/// a view carrying anything more is never cached.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
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

/// The PostgreSQL store: table `tickmesh_users (id text primary key, home text, profile text)`
/// (the profile as JSON).
///
/// Erasure is a `DELETE`: the row is gone for every reader at once. PostgreSQL itself keeps
/// the dead tuple's bytes until vacuum reuses the page and the WAL until it is recycled
/// (and archives and base backups as long as they are kept): the region's database
/// operations own that retention (encrypted storage, WAL archive expiry).
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

/// How this node reaches other regions' user-data tiers (the node wires the mesh's
/// request channel here: [`MeshHome`]).
pub trait HomeClient: Send + Sync + 'static {
    /// Fetches the PII-free view of `id` from its home region.
    fn fetch_view(&self, home: &str, id: &str) -> Result<Option<UserView>, TierError>;
    /// Sends new preferences to the home region (write-back).
    fn put_preferences(&self, home: &str, id: &str, prefs: &BTreeMap<String, String>) -> Result<(), TierError>;
    /// Tells `region` to erase its cached view of `id` (homed in `home`); true if it held one.
    fn drop_cached(&self, region: &str, home: &str, id: &str, operator: Option<&str>) -> Result<bool, TierError>;
    /// Sends a whole profile (personal fields included) to its home region to store: the
    /// one user-data message that carries personal data, and only toward home.
    fn put_at(&self, home: &str, p: &UserProfile) -> Result<(), TierError>;
    /// Asks `home` to forget `id` (for a request that reached another region).
    fn forget_at(&self, home: &str, id: &str, operator: Option<&str>) -> Result<ForgetReport, TierError>;
}

/// Where the tier records erasures, and how it tells an erased user from an unknown one:
/// the node's hash-chained audit log ([`AuditLog`](tickmesh_replicate::AuditLog)).
pub trait UserTrail: Send + Sync + 'static {
    /// Appends an entry.
    fn record(&self, kind: EntryKind, ev: UserDataRecord);
    /// Waits until what was recorded is durable (an erasure is reported only once it is).
    fn flush(&self);
    /// Whether an erasure of the user with this pseudonym at home is on record here.
    fn erased(&self, pseudonym: &str) -> bool;
}

impl UserTrail for tickmesh_replicate::AuditLog {
    fn record(&self, kind: EntryKind, ev: UserDataRecord) {
        tickmesh_replicate::TransferAudit::record_user_data(self, kind, ev);
    }
    fn flush(&self) {
        tickmesh_replicate::AuditLog::flush(self);
    }
    fn erased(&self, pseudonym: &str) -> bool {
        let f = tickmesh_replicate::AuditFilter {
            kind: Some(EntryKind::Erasure),
            user: Some(pseudonym.to_owned()),
            limit: Some(tickmesh_replicate::AuditFilter::MAX_LIMIT),
            ..Default::default()
        };
        self.query(&f).is_ok_and(|p| p.entries.iter().any(|e| e.event.as_ref().is_some_and(|ev| ev.op == "forget")))
    }
}

/// An in-memory [`UserTrail`], for tests and nodes without an audit directory.
#[derive(Debug, Default)]
pub struct MemoryTrail(pub Mutex<Vec<(EntryKind, UserDataRecord)>>);

impl UserTrail for MemoryTrail {
    fn record(&self, kind: EntryKind, ev: UserDataRecord) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push((kind, ev));
    }
    fn flush(&self) {}
    fn erased(&self, pseudonym: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|(k, e)| *k == EntryKind::Erasure && e.op == "forget" && e.user == pseudonym)
    }
}

/// The user-data tier of one node.
pub struct UserTier {
    region: String,
    others: Vec<String>,
    store: Arc<dyn UserStore>,
    home: Arc<dyn HomeClient>,
    trail: Arc<dyn UserTrail>,
    ttl: Duration,
    cache: Mutex<HashMap<String, (UserView, Instant)>>,
}

impl std::fmt::Debug for UserTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserTier").field("region", &self.region).finish_non_exhaustive()
    }
}

/// What happened in one other region during a forget.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RegionOutcome {
    /// The region.
    pub region: String,
    /// It answered (its cached view, if any, is erased).
    pub ok: bool,
    /// What it erased (`cached view erased`, `no cached view`), or why it could not be
    /// reached and what to do.
    pub outcome: String,
}

/// What [`UserTier::forget`] did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ForgetReport {
    /// The user.
    pub user: String,
    /// The home region, where the profile was.
    pub home: String,
    /// The profile was in the home store and is erased now.
    pub erased_at_home: bool,
    /// The profile had been erased by an earlier forget (this run only retried the other
    /// regions).
    pub already_erased: bool,
    /// Fields erased at home (names only).
    pub fields: Vec<String>,
    /// Every other region, with what it did.
    pub regions: Vec<RegionOutcome>,
    /// Every region answered: nothing is left to do. When false, run the same forget
    /// again once the failed regions are reachable (a cached view also expires by itself
    /// within the cache TTL).
    pub complete: bool,
}

/// The fields of a profile holding data (names, for the audit trail and reports).
fn fields_of(p: &UserProfile) -> Vec<String> {
    let mut f = Vec::new();
    if p.name.is_some() {
        f.push("name".to_owned());
    }
    if p.email.is_some() {
        f.push("email".to_owned());
    }
    f.push("entitlements".to_owned());
    f.push("preferences".to_owned());
    f
}

impl UserTier {
    /// A tier for `region`, whose peers are `others`, storing its users in `store`.
    pub fn new(
        region: impl Into<String>,
        others: Vec<String>,
        store: Arc<dyn UserStore>,
        home: Arc<dyn HomeClient>,
        trail: Arc<dyn UserTrail>,
        ttl: Duration,
    ) -> UserTier {
        UserTier { region: region.into(), others, store, home, trail, ttl, cache: Mutex::new(HashMap::new()) }
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

    /// Creates or replaces a user homed anywhere: stored here when homed here, else passed
    /// on to the home region over the mesh (this region keeps no copy, and drops its cached
    /// view so the next read sees the change).
    pub fn put_anywhere(&self, p: &UserProfile) -> Result<(), TierError> {
        p.validate()?;
        if p.home == self.region {
            return self.store.put(p);
        }
        self.home.put_at(&p.home, p)?;
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).remove(&p.id);
        Ok(())
    }

    /// The full profile of a user homed here (with personal data: only the home region
    /// answers this).
    pub fn profile(&self, id: &str) -> Result<UserProfile, TierError> {
        self.store.get(id)?.ok_or_else(|| TierError::UnknownUser(id.to_owned()))
    }

    /// The PII-free view of a user homed here, for a peer region's cache.
    pub fn view_for_peer(&self, id: &str) -> Result<Option<UserView>, TierError> {
        Ok(self.store.get(id)?.map(|p| p.view()))
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
        if v.id != id || v.home != home {
            return Err(TierError::Store(format!("{home} answered with the view of another user; not cached")));
        }
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
        let check = UserProfile {
            id: id.to_owned(),
            home: home.to_owned(),
            name: None,
            email: None,
            entitlements: Entitlements::default(),
            preferences: prefs,
        };
        check.validate()?;
        self.home.put_preferences(home, id, &check.preferences)?;
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
        Ok(())
    }

    /// Erases this region's cached view of `id` on the home region's request, and records
    /// the erasure; true if there was one.
    pub fn drop_cached(&self, id: &str, home: &str, operator: Option<String>) -> bool {
        let had = self.cache.lock().unwrap_or_else(|e| e.into_inner()).remove(id).is_some();
        self.trail.record(
            EntryKind::Erasure,
            UserDataRecord {
                op: "forget_cached".into(),
                user: user_pseudonym(id),
                home: home.to_owned(),
                from: home.to_owned(),
                to: self.region.clone(),
                dir: Direction::Receive,
                class: DataClass::MarketData,
                fields: if had { vec!["entitlements".into(), "preferences".into()] } else { Vec::new() },
                regions: Vec::new(),
                operator,
                decision: "allow".into(),
                reason: None,
                outcome: if had { "cached view erased".into() } else { "no cached view".into() },
                bytes: 0,
            },
        );
        self.trail.flush();
        had
    }

    /// Whether a view of `id` is cached here.
    pub fn is_cached(&self, id: &str) -> bool {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).contains_key(id)
    }

    /// Forgets a user: the request may reach any region; `home` (when known) says where
    /// the user lives, and a request for a user homed elsewhere is passed on over the mesh.
    pub fn forget_anywhere(
        &self,
        id: &str,
        home: Option<&str>,
        operator: Option<&str>,
    ) -> Result<ForgetReport, TierError> {
        match home {
            Some(h) if h != self.region => self.home.forget_at(h, id, operator),
            _ => self.forget(id, operator),
        }
    }

    /// Erases a user homed here, then every other region's cached view. The erasure is
    /// one entry of the audit chain (pseudonym, fields, regions told, operator, outcome),
    /// durable before this returns; each region records its own. Idempotent: a user
    /// erased before is not an error (the other regions are told again); a user never
    /// known here is [`TierError::UnknownUser`].
    pub fn forget(&self, id: &str, operator: Option<&str>) -> Result<ForgetReport, TierError> {
        let pseudonym = user_pseudonym(id);
        let (erased_at_home, fields) = match self.store.get(id)? {
            Some(p) if p.home != self.region => {
                return Err(TierError::NotHome { user: id.to_owned(), home: p.home, here: self.region.clone() })
            }
            Some(p) => {
                let fields = fields_of(&p);
                (self.store.delete(id)?, fields)
            }
            None if self.trail.erased(&pseudonym) => (false, Vec::new()),
            None => return Err(TierError::UnknownUser(id.to_owned())),
        };
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
        let mut regions = Vec::new();
        for r in &self.others {
            regions.push(match self.home.drop_cached(r, &self.region, id, operator) {
                Ok(true) => RegionOutcome { region: r.clone(), ok: true, outcome: "cached view erased".into() },
                Ok(false) => RegionOutcome { region: r.clone(), ok: true, outcome: "no cached view".into() },
                Err(e) => RegionOutcome {
                    region: r.clone(),
                    ok: false,
                    outcome: format!("not reached: {e}; its view expires within the cache TTL, and running the same forget again erases it now"),
                },
            });
        }
        let complete = regions.iter().all(|r| r.ok);
        let summary: Vec<String> = regions.iter().map(|r| format!("{}: {}", r.region, r.outcome)).collect();
        let home_outcome = if erased_at_home { "profile erased" } else { "already erased" };
        self.trail.record(
            EntryKind::Erasure,
            UserDataRecord {
                op: "forget".into(),
                user: pseudonym,
                home: self.region.clone(),
                from: self.region.clone(),
                to: self.region.clone(),
                dir: Direction::Send,
                class: DataClass::Pii,
                fields: fields.clone(),
                regions: self.others.clone(),
                operator: operator.map(str::to_owned),
                decision: "allow".into(),
                reason: None,
                outcome: format!("{home_outcome}; {}", summary.join("; ")),
                bytes: 0,
            },
        );
        self.trail.flush();
        Ok(ForgetReport {
            user: id.to_owned(),
            home: self.region.clone(),
            erased_at_home,
            already_erased: !erased_at_home,
            fields,
            regions,
            complete,
        })
    }

    /// Answers a peer region's user-data request (the mesh's handler calls this).
    pub fn answer(&self, peer: &str, req: &UserMessage) -> UserMessage {
        let ok = |class: DataClass, fields: Vec<String>, body: serde_json::Value| UserMessage {
            op: "ok".into(),
            user: req.user.clone(),
            home: req.home.clone(),
            class,
            fields,
            body,
            error: None,
            code: None,
        };
        let fail = |e: TierError| {
            let code = match e {
                TierError::UnknownUser(_) => "unknown_user",
                TierError::NotHome { .. } => "not_home_region",
                TierError::Invalid(_) => "invalid",
                _ => "failed",
            };
            UserMessage::error(req, code, e.to_string())
        };
        let operator = req.body.get("operator").and_then(|o| o.as_str()).map(str::to_owned);
        match req.op.as_str() {
            "view" => match self.view_for_peer(&req.user) {
                Ok(Some(v)) => ok(
                    DataClass::MarketData,
                    vec!["entitlements".into(), "preferences".into()],
                    serde_json::to_value(v).unwrap_or_default(),
                ),
                Ok(None) => fail(TierError::UnknownUser(req.user.clone())),
                Err(e) => fail(e),
            },
            "write_back" => {
                let prefs = match serde_json::from_value::<BTreeMap<String, String>>(req.body["preferences"].clone()) {
                    Ok(p) => p,
                    Err(e) => return fail(TierError::Invalid(format!("preferences: {e}"))),
                };
                match self.store.get(&req.user) {
                    Ok(Some(_)) => match self.set_preferences(&req.user, &self.region, prefs) {
                        Ok(()) => ok(DataClass::MarketData, Vec::new(), serde_json::Value::Null),
                        Err(e) => fail(e),
                    },
                    Ok(None) => fail(TierError::UnknownUser(req.user.clone())),
                    Err(e) => fail(e),
                }
            }
            "put" => match serde_json::from_value::<UserProfile>(req.body.clone()) {
                Ok(p) if p.id != req.user || p.home != req.home => {
                    fail(TierError::Invalid("the profile names another user or home than the request".into()))
                }
                Ok(p) => match self.put(&p) {
                    Ok(()) => ok(DataClass::MarketData, Vec::new(), serde_json::Value::Null),
                    Err(e) => fail(e),
                },
                Err(e) => fail(TierError::Invalid(format!("profile: {e}"))),
            },
            "drop_cache" => {
                let had = self.drop_cached(&req.user, &req.home, operator.or_else(|| Some(format!("region {peer}"))));
                ok(DataClass::MarketData, Vec::new(), serde_json::json!({ "dropped": had }))
            }
            "forget" if req.home == self.region => match self.forget(&req.user, operator.as_deref()) {
                Ok(r) => ok(DataClass::MarketData, Vec::new(), serde_json::to_value(r).unwrap_or_default()),
                Err(e) => fail(e),
            },
            "forget" => {
                fail(TierError::NotHome { user: req.user.clone(), home: req.home.clone(), here: self.region.clone() })
            }
            other => {
                UserMessage::error(req, "failed", format!("unknown request {other:?}; this node is older or newer"))
            }
        }
    }
}

/// The mesh's handler for peers' user-data requests: [`UserTier::answer`].
#[derive(Debug)]
pub struct TierHandler(pub Arc<UserTier>);

impl tickmesh_replicate::UserRequestHandler for TierHandler {
    fn handle(&self, peer: &str, req: UserMessage) -> UserMessage {
        self.0.answer(peer, &req)
    }
}

/// Reaches other regions' user-data tiers over the mesh's request channel. The mesh starts
/// after the tier, so the handle is set once it runs; until then (or without a `[mesh]`),
/// requests fail with a message saying so.
#[derive(Debug, Default)]
pub struct MeshHome {
    region: String,
    mesh: std::sync::OnceLock<tickmesh_replicate::MeshHandle>,
    timeout: Duration,
}

impl MeshHome {
    /// A client for `region`'s node; requests wait at most `timeout` for an answer.
    pub fn new(region: impl Into<String>, timeout: Duration) -> MeshHome {
        MeshHome { region: region.into(), mesh: std::sync::OnceLock::new(), timeout }
    }

    /// Connects it to the running mesh.
    pub fn set_mesh(&self, h: tickmesh_replicate::MeshHandle) {
        let _ = self.mesh.set(h);
    }

    fn call(&self, to: &str, m: UserMessage) -> Result<UserMessage, TierError> {
        self.call_with(to, m, self.timeout)
    }

    fn call_with(&self, to: &str, m: UserMessage, timeout: Duration) -> Result<UserMessage, TierError> {
        let Some(mesh) = self.mesh.get() else {
            return Err(TierError::Store(format!(
                "{} has no mesh, so it cannot reach {to}; configure [mesh] with {to} as a peer",
                self.region
            )));
        };
        let answer = mesh.user_request(to, m, timeout).map_err(|e| match e {
            tickmesh_replicate::RequestError::Refused(why) => TierError::Refused(why),
            other => TierError::Unreachable { region: to.to_owned(), reason: other.to_string() },
        })?;
        if answer.op == "error" {
            let msg = answer.error.unwrap_or_default();
            return Err(match answer.code.as_deref() {
                Some("unknown_user") => TierError::UnknownUser(answer.user),
                Some("invalid") => TierError::Invalid(msg),
                _ => TierError::Store(format!("{to}: {msg}")),
            });
        }
        Ok(answer)
    }

    fn msg(op: &str, id: &str, home: &str, fields: Vec<String>, body: serde_json::Value) -> UserMessage {
        UserMessage {
            op: op.into(),
            user: id.to_owned(),
            home: home.to_owned(),
            class: DataClass::MarketData,
            fields,
            body,
            error: None,
            code: None,
        }
    }
}

impl HomeClient for MeshHome {
    fn fetch_view(&self, home: &str, id: &str) -> Result<Option<UserView>, TierError> {
        match self.call(home, MeshHome::msg("view", id, home, Vec::new(), serde_json::Value::Null)) {
            // A view with any field beyond the PII-free ones is refused (UserView denies
            // unknown fields), so a misbehaving home cannot fill this cache with PII.
            Ok(a) => serde_json::from_value::<UserView>(a.body)
                .map(Some)
                .map_err(|e| TierError::Store(format!("{home} answered something that is not a PII-free view: {e}"))),
            Err(TierError::UnknownUser(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn put_preferences(&self, home: &str, id: &str, prefs: &BTreeMap<String, String>) -> Result<(), TierError> {
        let body = serde_json::json!({ "preferences": prefs });
        self.call(home, MeshHome::msg("write_back", id, home, vec!["preferences".into()], body)).map(|_| ())
    }

    fn drop_cached(&self, region: &str, home: &str, id: &str, operator: Option<&str>) -> Result<bool, TierError> {
        let body = serde_json::json!({ "operator": operator });
        let a = self.call(region, MeshHome::msg("drop_cache", id, home, Vec::new(), body))?;
        Ok(a.body["dropped"].as_bool().unwrap_or(false))
    }

    fn put_at(&self, home: &str, p: &UserProfile) -> Result<(), TierError> {
        let mut m = MeshHome::msg("put", &p.id, home, fields_of(p), serde_json::to_value(p).unwrap_or_default());
        if p.name.is_some() || p.email.is_some() {
            m.class = DataClass::Pii;
        }
        self.call(home, m).map(|_| ())
    }

    fn forget_at(&self, home: &str, id: &str, operator: Option<&str>) -> Result<ForgetReport, TierError> {
        let body = serde_json::json!({ "operator": operator });
        // The home region tells every other region in turn: give it time for each.
        let a = self.call_with(home, MeshHome::msg("forget", id, home, Vec::new(), body), self.timeout * 4)?;
        serde_json::from_value(a.body).map_err(|e| TierError::Store(format!("{home} answered a bad report: {e}")))
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

    /// A home client that answers from other tiers directly (no mesh), counting fetches;
    /// `ap-southeast-1` is unreachable.
    #[derive(Default)]
    struct Direct {
        tiers: Mutex<Vec<Arc<UserTier>>>,
        fetches: std::sync::atomic::AtomicU32,
    }

    impl Direct {
        fn tier(&self, region: &str) -> Result<Arc<UserTier>, TierError> {
            let t = self.tiers.lock().unwrap();
            t.iter().find(|t| t.region() == region).cloned().ok_or_else(|| TierError::Unreachable {
                region: region.to_owned(),
                reason: "connection refused".into(),
            })
        }
        fn ask(&self, to: &str, from: &str, m: UserMessage) -> Result<UserMessage, TierError> {
            let a = self.tier(to)?.answer(from, &m);
            match a.code.as_deref() {
                Some("unknown_user") => Err(TierError::UnknownUser(a.user)),
                Some(_) => Err(TierError::Store(a.error.unwrap_or_default())),
                None => Ok(a),
            }
        }
    }

    impl HomeClient for Direct {
        fn fetch_view(&self, home: &str, id: &str) -> Result<Option<UserView>, TierError> {
            self.fetches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let a = self.ask(home, "eu-west-1", MeshHome::msg("view", id, home, vec![], serde_json::Value::Null))?;
            Ok(Some(serde_json::from_value(a.body).unwrap()))
        }
        fn put_preferences(&self, home: &str, id: &str, prefs: &BTreeMap<String, String>) -> Result<(), TierError> {
            let body = serde_json::json!({ "preferences": prefs });
            self.ask(home, "eu-west-1", MeshHome::msg("write_back", id, home, vec![], body)).map(|_| ())
        }
        fn drop_cached(&self, region: &str, home: &str, id: &str, op: Option<&str>) -> Result<bool, TierError> {
            let body = serde_json::json!({ "operator": op });
            let a = self.ask(region, home, MeshHome::msg("drop_cache", id, home, vec![], body))?;
            Ok(a.body["dropped"].as_bool().unwrap())
        }
        fn put_at(&self, home: &str, p: &UserProfile) -> Result<(), TierError> {
            let body = serde_json::to_value(p).unwrap();
            self.ask(home, "eu-west-1", MeshHome::msg("put", &p.id, home, vec![], body)).map(|_| ())
        }
        fn forget_at(&self, home: &str, id: &str, op: Option<&str>) -> Result<ForgetReport, TierError> {
            let body = serde_json::json!({ "operator": op });
            let a = self.ask(home, "eu-west-1", MeshHome::msg("forget", id, home, vec![], body))?;
            Ok(serde_json::from_value(a.body).unwrap())
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
        let home_trail = Arc::new(MemoryTrail::default());
        let eu_trail = Arc::new(MemoryTrail::default());
        let direct = Arc::new(Direct::default());
        let home_store = Arc::new(RedbStore::open(&dir.path().join("use1.redb")).unwrap());
        let others = vec!["eu-west-1".into(), "ap-southeast-1".into()];
        let ttl = Duration::from_secs(60);
        let home = Arc::new(UserTier::new("us-east-1", others, home_store, direct.clone(), home_trail.clone(), ttl));
        let eu_store = Arc::new(RedbStore::open(&dir.path().join("euw1.redb")).unwrap());
        let short = Duration::from_millis(50);
        let eu =
            Arc::new(UserTier::new("eu-west-1", vec![], eu_store.clone(), direct.clone(), eu_trail.clone(), short));
        direct.tiers.lock().unwrap().extend([home.clone(), eu.clone()]);

        assert!(matches!(eu.put(&alice()), Err(TierError::NotHome { .. })));
        // Created from another region: passed on home, no copy kept.
        eu.put_anywhere(&alice()).unwrap();
        assert_eq!(home.profile("alice").unwrap(), alice());
        assert!(eu_store.ids().unwrap().is_empty());
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
        assert!(eu.is_cached("alice"));
        assert!(matches!(eu.forget("alice", None), Err(TierError::UnknownUser(_))));
        let r = home.forget("alice", Some("ops")).unwrap();
        assert!(r.erased_at_home && !r.already_erased && !r.complete, "{r:?}");
        assert_eq!(r.fields, ["name", "email", "entitlements", "preferences"]);
        assert_eq!(
            r.regions[0],
            RegionOutcome { region: "eu-west-1".into(), ok: true, outcome: "cached view erased".into() }
        );
        assert!(!r.regions[1].ok && r.regions[1].outcome.contains("running the same forget again"), "{r:?}");
        assert!(!eu.is_cached("alice"));
        assert!(matches!(home.profile("alice"), Err(TierError::UnknownUser(_))));
        // Idempotent: a second forget retries the regions and says it was erased before.
        let again = home.forget("alice", Some("ops")).unwrap();
        assert!(!again.erased_at_home && again.already_erased, "{again:?}");
        assert_eq!(again.regions[0].outcome, "no cached view");
        // A user never known is an error, not a silent success.
        assert!(matches!(home.forget("mallory", None), Err(TierError::UnknownUser(_))));
        // Asked in another region with the home named, it is passed on.
        home.put(&UserProfile { id: "bob".into(), ..alice() }).unwrap();
        let via = eu.forget_anywhere("bob", Some("us-east-1"), Some("ops")).unwrap();
        assert!(via.erased_at_home && via.home == "us-east-1", "{via:?}");

        let h = home_trail.0.lock().unwrap();
        let forgets: Vec<&UserDataRecord> =
            h.iter().filter(|(k, _)| *k == EntryKind::Erasure).map(|(_, e)| e).collect();
        assert_eq!(forgets.len(), 3, "{forgets:?}");
        assert_eq!(forgets[0].user, user_pseudonym("alice"));
        assert_eq!(forgets[0].operator.as_deref(), Some("ops"));
        assert_eq!(forgets[0].regions, ["eu-west-1", "ap-southeast-1"]);
        assert!(
            forgets[0].outcome.starts_with("profile erased; eu-west-1: cached view erased"),
            "{}",
            forgets[0].outcome
        );
        assert!(h.iter().all(|(_, e)| !serde_json::to_string(e).unwrap().contains("alice")), "pseudonyms only");
        let e = eu_trail.0.lock().unwrap();
        let cached: Vec<&str> = e.iter().map(|(_, e)| e.outcome.as_str()).collect();
        assert_eq!(cached, ["cached view erased", "no cached view", "no cached view"]);
    }

    #[test]
    fn a_view_with_personal_fields_is_not_accepted() {
        let mut v = serde_json::to_value(alice().view()).unwrap();
        v["email"] = "alice@example.com".into();
        assert!(serde_json::from_value::<UserView>(v).is_err());
    }

    #[test]
    fn config_problems_say_what_to_set() {
        let mut p = Vec::new();
        UserDataConfig { backend: Backend::Postgres, postgres_url: None, cache_ttl_s: 0 }.validate(&mut p);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("needs userdata.postgres_url"));
    }
}
