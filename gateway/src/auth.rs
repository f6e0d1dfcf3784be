//! Token verification and entitlements: PROTOCOL.md, section "Tokens".
//!
//! A client proves who it is with a JWT: in the `token` query parameter of `GET /v1/ws` (a
//! browser cannot set headers on a WebSocket upgrade) or in `Authorization: Bearer`. The
//! gateway verifies it once, before the upgrade, with [`Verifier::verify`], and keeps the
//! [`Claims`] for the session. Each later subscription is checked against them with
//! [`Claims::allows_channel`] and [`Claims::allows_symbol`].
//!
//! # Why these rules
//! * **Two algorithms, each tried only with its own keys.** HS256 (shared secret) is simple
//!   for one operator. EdDSA lets a separate issuer sign while the regions hold only public
//!   keys. A token's `alg` header picks the key set: HS256 tokens are tried against HS256
//!   secrets only, EdDSA tokens against Ed25519 public keys only. So a public key can never be
//!   used as an HMAC secret (the classic algorithm-confusion attack). Every other `alg`,
//!   `none` included, is refused before any key is touched.
//! * **Several keys of each kind** so keys can be rotated: trust old and new, then drop old.
//! * **Time is an argument** (`now_unix_secs`, STYLE.md habit 2), so expiry tests are
//!   deterministic. jsonwebtoken's own time checks read the system clock, so they are off, and
//!   `exp` and `nbf` are checked here with [`CLOCK_LEEWAY_SECS`] of tolerance for clock skew
//!   between the issuer and the region.
//! * **`aud` is refused.** Tickmesh tokens carry no audience, and RFC 7519 4.1.3 says a
//!   recipient that does not find itself in `aud` must reject the token. A token minted for
//!   another service is therefore not accepted here by accident.
//! * **Errors say what the client should do.** [`AuthError::code`] is the stable code for the
//!   HTTP 401 body, `{"error":{"code","message"}}`. The message is the error's `Display`.

use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::de::{self, DeserializeOwned, Deserializer, SeqAccess, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

/// How far past `exp` a token is still accepted, and how early before `nbf`, in seconds.
///
/// Issuer and regions run on different machines, so their clocks may disagree. 30 s covers
/// NTP-synchronised hosts with margin, and keeps a stolen, expired token useless soon after.
pub const CLOCK_LEEWAY_SECS: u64 = 30;

/// The longest token accepted, in bytes.
///
/// Checked before any decoding, so that a huge `token=` cannot make the gateway base64-decode
/// and parse megabytes per upgrade attempt. A token with a few hundred symbols fits easily.
/// Longer grants should use patterns (`"BTC-*"`).
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// The channels that `"*"` grants (PROTOCOL.md): every public channel. `orders` is private and
/// is granted only when named.
pub const PUBLIC_CHANNELS: [&str; 4] = ["trades", "quotes", "book", "status"];

/// The claims tickmesh needs, `sub`, `exp`, `channels` and `symbols`, in the order reported
/// missing.
const REQUIRED_CLAIMS: [&str; 4] = ["sub", "exp", "channels", "symbols"];

/// What a token grants along one axis (channels or symbols): everything, or a list.
///
/// On the wire it is the string `"*"` or an array of strings. Any other string is refused
/// rather than read as a one-item list, so that a typo such as `"channels": "trades"` fails at
/// verification instead of granting something unexpected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// `"*"`: every public channel, or every symbol.
    All,
    /// Named items. For symbols an item may be a prefix pattern ending in `*`, like `"BTC-*"`.
    List(Vec<String>),
}

impl Serialize for Grant {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Grant::All => serializer.serialize_str("*"),
            Grant::List(items) => serializer.collect_seq(items),
        }
    }
}

impl<'de> Deserialize<'de> for Grant {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct GrantVisitor;

        impl<'de> Visitor<'de> for GrantVisitor {
            type Value = Grant;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"*\" or a list of strings")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Grant, E> {
                if v == "*" {
                    Ok(Grant::All)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(v), &self))
                }
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Grant, A::Error> {
                // The size hint comes from the input, so cap what is reserved up front.
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(256));
                while let Some(item) = seq.next_element::<String>()? {
                    items.push(item);
                }
                Ok(Grant::List(items))
            }
        }

        deserializer.deserialize_any(GrantVisitor)
    }
}

/// The verified claims of a token: who the user is and what they may subscribe to.
///
/// Other registered claims (`iat`, `nbf`, `iss`, `jti`) may be present in a token. They are
/// not kept here, except that `nbf` is checked during verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id. `orders` updates go only to connections whose token has this `sub`.
    pub sub: String,
    /// Expiry, in Unix seconds.
    pub exp: u64,
    /// The user's home region: the only region that serves their `orders` channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home: Option<String>,
    /// The channels the token may subscribe to.
    pub channels: Grant,
    /// The symbols (or symbol patterns) the token may subscribe to.
    pub symbols: Grant,
    /// Roles such as `admin` (needed by `/v1/admin/*`). Empty when absent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
}

impl Claims {
    /// Whether the token may subscribe to channel `ch`.
    ///
    /// `"*"`, as the grant or as an item of the list, covers the [`PUBLIC_CHANNELS`] and
    /// nothing else. `orders` is private, so it must be named in the list. A request for `"*"`
    /// is allowed when every public channel is. An unknown channel is allowed only if the list
    /// names it; the gateway refuses unknown channels before asking.
    pub fn allows_channel(&self, ch: &str) -> bool {
        if ch == "*" {
            return PUBLIC_CHANNELS.iter().all(|c| self.allows_channel(c));
        }
        let public = PUBLIC_CHANNELS.contains(&ch);
        match &self.channels {
            Grant::All => public,
            Grant::List(items) => items.iter().any(|g| g == ch || (public && g == "*")),
        }
    }

    /// Whether the token may subscribe to `requested`: a plain symbol (`"BTC-USD"`) or a
    /// prefix pattern (`"BTC-*"`, or `"*"` for every symbol).
    ///
    /// A grant item that ends in `*` is a prefix pattern. A pattern request is allowed only if
    /// one grant pattern covers every symbol it can match: `"BTC-*"` is allowed by the grants
    /// `"BTC-*"`, `"B*"` and `"*"`, but not by `"BTC-USD"`, because the request also matches
    /// symbols that are not granted. So `"*"` is requested only with a `"*"` grant. Matching
    /// is case-sensitive, because symbols are the venue's own spelling. Only a trailing `*`
    /// is special.
    pub fn allows_symbol(&self, requested: &str) -> bool {
        match &self.symbols {
            Grant::All => true,
            Grant::List(items) => items.iter().any(|g| grant_covers(g, requested)),
        }
    }

    /// Whether the token carries role `r` (for example `admin`).
    pub fn has_role(&self, r: &str) -> bool {
        self.roles.iter().any(|x| x == r)
    }
}

/// Whether grant item `grant` covers every symbol that `requested` can match.
fn grant_covers(grant: &str, requested: &str) -> bool {
    match grant.strip_suffix('*') {
        // A plain grant covers only the same plain symbol, never a pattern.
        None => grant == requested,
        // A prefix grant covers a symbol with that prefix, and a pattern whose own prefix
        // starts with it (every symbol matching "BTC-*" also matches "B*").
        Some(prefix) => requested.strip_suffix('*').unwrap_or(requested).starts_with(prefix),
    }
}

/// Why a token was refused, or why a key or token could not be made.
///
/// The variants for a client's token map to HTTP 401 and a stable [`AuthError::code`]. `Key`
/// and `Mint` are the operator's problem (a bad key file), not the client's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No token in the query or the `Authorization` header.
    #[error("no token given; pass one as the `token` query parameter or as `Authorization: Bearer <token>`")]
    MissingToken,
    /// The token is longer than [`MAX_TOKEN_LEN`].
    #[error("token is {len} bytes, over the {max}-byte limit; ask for a token with fewer symbols, or prefix patterns such as \"BTC-*\"")]
    TooLong {
        /// The token's length in bytes.
        len: usize,
        /// [`MAX_TOKEN_LEN`].
        max: usize,
    },
    /// The token is not a three-part JWT, or a part does not decode.
    #[error("token is malformed ({part}: {reason}); send the token exactly as it was issued, three base64url parts joined by dots")]
    Malformed {
        /// Which part was bad: `token` (its shape), `header`, `payload` or `signature`.
        part: &'static str,
        /// What was wrong with it.
        reason: String,
    },
    /// The header's `alg` is neither HS256 nor EdDSA. This includes `none`.
    #[error("token algorithm {alg:?} is not accepted; ask for a token signed with HS256 or EdDSA")]
    UnsupportedAlgorithm {
        /// The `alg` as found in the header, cut to 40 characters.
        alg: String,
    },
    /// The token's algorithm is supported, but this server trusts no key of that kind.
    #[error("token is signed with {alg} but this server trusts no {alg} key; ask for a token signed with a key this server trusts")]
    NoKeyForAlgorithm {
        /// `HS256` or `EdDSA`.
        alg: &'static str,
    },
    /// No trusted key of the token's algorithm verifies its signature.
    #[error("token signature does not match any key this server trusts; ask for a token signed with a trusted key")]
    BadSignature,
    /// `now` is at or past `exp` plus [`CLOCK_LEEWAY_SECS`].
    #[error("token expired at {exp} (unix seconds, now {now}); get a new token")]
    Expired {
        /// The token's `exp`.
        exp: u64,
        /// The time it was checked at.
        now: u64,
    },
    /// `now` plus [`CLOCK_LEEWAY_SECS`] is before the token's `nbf`.
    #[error("token is not valid before {nbf} (unix seconds, now {now}); retry then, or check the issuer's clock")]
    NotYetValid {
        /// The token's `nbf`.
        nbf: u64,
        /// The time it was checked at.
        now: u64,
    },
    /// A claim tickmesh needs is absent (or null, or an empty `sub`).
    #[error("token has no `{claim}` claim; tokens need sub, exp, channels and symbols, as `tickmesh token` sets them")]
    MissingClaim {
        /// `sub`, `exp`, `channels` or `symbols`.
        claim: &'static str,
    },
    /// A claim is present but has the wrong type.
    #[error("token claim `{claim}` is invalid ({reason}); channels and symbols take \"*\" or a list of strings, exp and nbf take unix seconds")]
    InvalidClaim {
        /// The claim's name.
        claim: &'static str,
        /// What was wrong with it.
        reason: String,
    },
    /// The token names an audience (`aud`), and this server has none.
    #[error(
        "token has an `aud` claim, so it was issued for another service; ask for a tickmesh token, which has no `aud`"
    )]
    AudienceNotAccepted,
    /// A key given to the verifier or to a mint function is unusable.
    #[error("key is unusable ({reason}); for EdDSA create a pair with `openssl genpkey -algorithm ed25519 -out key.pem` and `openssl pkey -in key.pem -pubout`")]
    Key {
        /// What was wrong with it.
        reason: String,
    },
    /// Signing failed for a reason other than the key.
    #[error("could not sign the token ({reason}); check the claims and the key file")]
    Mint {
        /// What went wrong.
        reason: String,
    },
}

impl AuthError {
    /// The stable code for the `{"error":{"code","message"}}` body. Clients branch on it.
    ///
    /// * `missing_token`: no token sent.
    /// * `expired_token`: get a fresh token and reconnect.
    /// * `bad_token`: the token will never be accepted (malformed, wrong algorithm, wrong key,
    ///   bad claims, not yet valid).
    /// * `bad_key`, `mint_failed`: server side, never sent for a client's token.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::MissingToken => "missing_token",
            AuthError::Expired { .. } => "expired_token",
            AuthError::TooLong { .. }
            | AuthError::Malformed { .. }
            | AuthError::UnsupportedAlgorithm { .. }
            | AuthError::NoKeyForAlgorithm { .. }
            | AuthError::BadSignature
            | AuthError::NotYetValid { .. }
            | AuthError::MissingClaim { .. }
            | AuthError::InvalidClaim { .. }
            | AuthError::AudienceNotAccepted => "bad_token",
            AuthError::Key { .. } => "bad_key",
            AuthError::Mint { .. } => "mint_failed",
        }
    }

    /// The HTTP status that goes with [`AuthError::code`]: 401 for a client's token, 500 for
    /// the server's own key problems.
    pub fn http_status(&self) -> u16 {
        match self {
            AuthError::Key { .. } | AuthError::Mint { .. } => 500,
            _ => 401,
        }
    }
}

/// The algorithms tickmesh accepts, as read from a token's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alg {
    Hs256,
    EdDsa,
}

impl Alg {
    fn name(self) -> &'static str {
        match self {
            Alg::Hs256 => "HS256",
            Alg::EdDsa => "EdDSA",
        }
    }

    fn jwt(self) -> Algorithm {
        match self {
            Alg::Hs256 => Algorithm::HS256,
            Alg::EdDsa => Algorithm::EdDSA,
        }
    }
}

/// The trusted keys: any number of HS256 secrets and Ed25519 public keys.
///
/// Built once from configuration and shared read-only by every gateway core.
#[derive(Clone, Default)]
pub struct Verifier {
    hs256: Vec<DecodingKey>,
    eddsa: Vec<DecodingKey>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Counts only: secrets must not reach a log line.
        f.debug_struct("Verifier")
            .field("hs256_keys", &self.hs256.len())
            .field("eddsa_keys", &self.eddsa.len())
            .finish()
    }
}

impl Verifier {
    /// A verifier that trusts no key yet, so it refuses every token.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts HS256 tokens signed with `secret`.
    ///
    /// Use at least 32 random bytes (RFC 7518 3.2). An empty secret is ignored, because it
    /// would accept tokens that anyone can sign. Configuration validation should reject it
    /// with a message.
    pub fn add_hs256(&mut self, secret: &[u8]) {
        if !secret.is_empty() {
            self.hs256.push(DecodingKey::from_secret(secret));
        }
    }

    /// Trusts EdDSA tokens signed by the Ed25519 key whose public half is `pem`: a
    /// `-----BEGIN PUBLIC KEY-----` (SPKI) block, as `openssl pkey -pubout` writes it.
    ///
    /// The key is checked now, so that a bad key file fails at start-up and not at the first
    /// client. Ed448 keys and private keys are refused.
    pub fn add_eddsa_public_pem(&mut self, pem: &[u8]) -> Result<(), AuthError> {
        let key = DecodingKey::from_ed_pem(pem).map_err(|e| AuthError::Key {
            reason: if contains(pem, b"PRIVATE KEY") {
                "this is a private key; give the public half, from `openssl pkey -in key.pem -pubout`".to_owned()
            } else {
                format!("not an ed25519 public key in pem form: {e}")
            },
        })?;
        // jsonwebtoken slices the key's first 32 bytes when it verifies and would panic on a
        // shorter one. So check the length here, then run one verification to make sure the
        // bytes are a valid curve point.
        match key.try_get_as_bytes() {
            Ok(bytes) if bytes.len() == 32 => {}
            _ => {
                return Err(AuthError::Key {
                    reason: "the public key is not 32 bytes, so it is not ed25519".to_owned(),
                })
            }
        }
        let zero_signature = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0u8; 64]);
        jsonwebtoken::crypto::verify(&zero_signature, b"probe", &key, Algorithm::EdDSA)
            .map_err(|e| AuthError::Key { reason: format!("the public key is not a valid ed25519 point: {e}") })?;
        self.eddsa.push(key);
        Ok(())
    }

    /// Verifies `token` at time `now_unix_secs` and returns its claims.
    ///
    /// The checks, in order: length, shape and header, algorithm (HS256 or EdDSA only), the
    /// signature against each trusted key of that algorithm, `aud` absent, required claims
    /// present and well-typed, `nbf` and `exp` with [`CLOCK_LEEWAY_SECS`]. A token is expired
    /// when `now >= exp + leeway`.
    pub fn verify(&self, token: &str, now_unix_secs: u64) -> Result<Claims, AuthError> {
        if token.is_empty() {
            return Err(AuthError::MissingToken);
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::TooLong { len: token.len(), max: MAX_TOKEN_LEN });
        }
        let alg = token_alg(token)?;
        let keys = match alg {
            Alg::Hs256 => &self.hs256,
            Alg::EdDsa => &self.eddsa,
        };
        if keys.is_empty() {
            return Err(AuthError::NoKeyForAlgorithm { alg: alg.name() });
        }

        let mut validation = Validation::new(alg.jwt());
        // Time and required claims are checked below, against `now_unix_secs`. jsonwebtoken
        // would use the system clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.required_spec_claims.clear();
        // No audience is configured, so jsonwebtoken refuses any token that carries `aud`.
        validation.validate_aud = true;

        for key in keys {
            match jsonwebtoken::decode::<serde_json::Value>(token, key, &validation) {
                Ok(data) => return claims_from_payload(data.claims, now_unix_secs),
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => continue,
                Err(e) => return Err(map_decode_error(e)),
            }
        }
        Err(AuthError::BadSignature)
    }
}

/// Whether `needle` occurs in `haystack`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Reads the `alg` of the token's header and refuses everything but HS256 and EdDSA.
///
/// This is done before jsonwebtoken sees the token for two reasons: `none` and unknown names
/// get a clear error instead of a JSON one, and the algorithm picks which keys are tried.
fn token_alg(token: &str) -> Result<Alg, AuthError> {
    #[derive(Deserialize)]
    struct RawHeader {
        alg: String,
        #[serde(default)]
        crit: Option<serde_json::Value>,
    }

    let mut parts = token.split('.');
    let (Some(header), Some(_payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed {
            part: "token",
            reason: format!("{} dot-separated parts instead of 3", token.split('.').count()),
        });
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|e| AuthError::Malformed { part: "header", reason: format!("not base64url: {e}") })?;
    let raw: RawHeader = serde_json::from_slice(&bytes).map_err(|e| AuthError::Malformed {
        part: "header",
        reason: format!("not a json object with a string `alg`: {e}"),
    })?;
    // RFC 7515 4.1.11: a recipient that does not understand a critical extension must refuse
    // the token. This server understands none.
    if raw.crit.is_some() {
        return Err(AuthError::Malformed {
            part: "header",
            reason: "it has a `crit` parameter and this server supports no critical extension".to_owned(),
        });
    }
    match raw.alg.as_str() {
        "HS256" => Ok(Alg::Hs256),
        "EdDSA" => Ok(Alg::EdDsa),
        other => Err(AuthError::UnsupportedAlgorithm { alg: other.chars().take(40).collect() }),
    }
}

/// Maps a jsonwebtoken failure other than a signature mismatch.
fn map_decode_error(e: jsonwebtoken::errors::Error) -> AuthError {
    match e.kind() {
        ErrorKind::InvalidAudience => AuthError::AudienceNotAccepted,
        ErrorKind::InvalidEddsaKey | ErrorKind::InvalidKeyFormat => AuthError::Key { reason: e.to_string() },
        ErrorKind::Json(_) | ErrorKind::Utf8(_) => AuthError::Malformed { part: "payload", reason: e.to_string() },
        ErrorKind::Base64(_) => AuthError::Malformed { part: "token", reason: format!("a part is not base64url: {e}") },
        _ => AuthError::Malformed { part: "token", reason: e.to_string() },
    }
}

/// Builds [`Claims`] from a verified payload and checks the time claims against `now`.
///
/// It takes the claims one by one, rather than deserialising the struct, so that an error
/// can name the claim that is missing or wrong.
fn claims_from_payload(payload: serde_json::Value, now: u64) -> Result<Claims, AuthError> {
    let serde_json::Value::Object(mut map) = payload else {
        return Err(AuthError::Malformed { part: "payload", reason: "not a json object".to_owned() });
    };
    for claim in REQUIRED_CLAIMS {
        if map.get(claim).is_none_or(serde_json::Value::is_null) {
            return Err(AuthError::MissingClaim { claim });
        }
    }
    let sub: String = required(&mut map, "sub")?;
    if sub.is_empty() {
        return Err(AuthError::MissingClaim { claim: "sub" });
    }
    let exp: u64 = required(&mut map, "exp")?;
    let channels: Grant = required(&mut map, "channels")?;
    let symbols: Grant = required(&mut map, "symbols")?;
    let home: Option<String> = optional(&mut map, "home")?;
    let roles: Vec<String> = optional(&mut map, "roles")?.unwrap_or_default();
    let nbf: Option<u64> = optional(&mut map, "nbf")?;

    if let Some(nbf) = nbf {
        if now.saturating_add(CLOCK_LEEWAY_SECS) < nbf {
            return Err(AuthError::NotYetValid { nbf, now });
        }
    }
    if now >= exp.saturating_add(CLOCK_LEEWAY_SECS) {
        return Err(AuthError::Expired { exp, now });
    }
    Ok(Claims { sub, exp, home, channels, symbols, roles })
}

fn required<T: DeserializeOwned>(
    map: &mut serde_json::Map<String, serde_json::Value>,
    claim: &'static str,
) -> Result<T, AuthError> {
    optional(map, claim)?.ok_or(AuthError::MissingClaim { claim })
}

fn optional<T: DeserializeOwned>(
    map: &mut serde_json::Map<String, serde_json::Value>,
    claim: &'static str,
) -> Result<Option<T>, AuthError> {
    match map.remove(claim) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(value) => serde_json::from_value(value)
            .map(Some)
            .map_err(|e| AuthError::InvalidClaim { claim, reason: e.to_string() }),
    }
}

/// Signs `claims` as an HS256 token with `secret` (for `tickmesh token` and tests).
pub fn mint_hs256(secret: &[u8], claims: &Claims) -> Result<String, AuthError> {
    if secret.is_empty() {
        return Err(AuthError::Key { reason: "the hs256 secret is empty; use at least 32 random bytes".to_owned() });
    }
    encode(Algorithm::HS256, claims, &EncodingKey::from_secret(secret))
}

/// Signs `claims` as an EdDSA token with an Ed25519 private key in PKCS#8 PEM
/// (`-----BEGIN PRIVATE KEY-----`, as `openssl genpkey -algorithm ed25519` writes it).
pub fn mint_eddsa(private_pem: &[u8], claims: &Claims) -> Result<String, AuthError> {
    let key = EncodingKey::from_ed_pem(private_pem)
        .map_err(|e| AuthError::Key { reason: format!("not an ed25519 private key in pkcs#8 pem form: {e}") })?;
    encode(Algorithm::EdDSA, claims, &key)
}

fn encode(alg: Algorithm, claims: &Claims, key: &EncodingKey) -> Result<String, AuthError> {
    jsonwebtoken::encode(&Header::new(alg), claims, key).map_err(|e| match e.kind() {
        ErrorKind::InvalidEddsaKey | ErrorKind::InvalidKeyFormat => AuthError::Key { reason: e.to_string() },
        _ => AuthError::Mint { reason: e.to_string() },
    })
}

/// The token a `/v1/ws` upgrade or an admin request carries, if any.
///
/// `query` is the URI's query string (with or without its leading `?`). The first non-empty
/// `token` parameter wins, percent-decoded, with `+` read as a space as in HTML forms (a JWT
/// contains neither). Without one, `authorization_header` is read as `Bearer <token>`, the
/// scheme matched case-insensitively (RFC 9110 11.1). The query comes first because browsers
/// can pass a token only there. A client that sends both has chosen the query on purpose.
pub fn token_from_request(query: Option<&str>, authorization_header: Option<&str>) -> Option<String> {
    if let Some(query) = query {
        let query = query.strip_prefix('?').unwrap_or(query);
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if percent_decode(key) == "token" {
                let value = percent_decode(value);
                if !value.is_empty() {
                    return Some(value);
                }
            }
        }
    }
    let header = authorization_header?.trim();
    let (scheme, rest) = header.split_once([' ', '\t'])?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim();
    (!token.is_empty()).then(|| token.to_owned())
}

/// Decodes `%XX` escapes and `+` (form encoding). A `%` not followed by two hex digits stays
/// as it is. Invalid UTF-8 becomes U+FFFD, and verification then refuses the token as
/// malformed rather than as missing.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                if let Some(decoded) = hex {
                    out.push(decoded);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' => out.push(b' '),
            _ => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    // Generated once on the development machine with
    // `openssl genpkey -algorithm ed25519` and `openssl pkey -pubout`. Test keys only.
    const ED_PRIVATE_1: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIHf1RwWa5rBQ0YlKIOo2B+hqVf83kyz3Y7VPXXXdk+Eq
-----END PRIVATE KEY-----
";
    const ED_PUBLIC_1: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEA5rejamO2CB9GjctbmswMOAioh8z0RgwlFuFw2hCzrOA=
-----END PUBLIC KEY-----
";
    const ED_PRIVATE_2: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIGB0LqLNdz2fIJgvrAl1MrgaZO29puB5XOExwituJ2Jc
-----END PRIVATE KEY-----
";
    const ED_PUBLIC_2: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAJccZZFjc6XYTOWayg32BbrqrrnfgNl63uzyDY8/PbwY=
-----END PUBLIC KEY-----
";

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const NOW: u64 = 1_700_000_000;

    fn claims() -> Claims {
        Claims {
            sub: "user-1".into(),
            exp: NOW + 3600,
            home: Some("us-east-1".into()),
            channels: Grant::List(vec!["trades".into(), "orders".into()]),
            symbols: Grant::List(vec!["AAPL".into(), "BTC-*".into()]),
            roles: vec!["admin".into()],
        }
    }

    fn hs_verifier() -> Verifier {
        let mut v = Verifier::new();
        v.add_hs256(SECRET);
        v
    }

    fn ed_verifier() -> Verifier {
        let mut v = Verifier::new();
        v.add_eddsa_public_pem(ED_PUBLIC_1.as_bytes()).unwrap();
        v
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// An HS256 token over an arbitrary JSON payload, for claims `Claims` cannot express.
    fn hs_token_for(payload: &serde_json::Value) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), payload, &EncodingKey::from_secret(SECRET)).unwrap()
    }

    fn full_payload() -> serde_json::Value {
        json!({"sub": "u", "exp": NOW + 60, "channels": "*", "symbols": ["AAPL"]})
    }

    #[test]
    fn hs256_round_trip() {
        let token = mint_hs256(SECRET, &claims()).unwrap();
        assert_eq!(hs_verifier().verify(&token, NOW), Ok(claims()));
    }

    #[test]
    fn eddsa_round_trip() {
        let token = mint_eddsa(ED_PRIVATE_1.as_bytes(), &claims()).unwrap();
        assert_eq!(ed_verifier().verify(&token, NOW), Ok(claims()));
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::EdDSA);
    }

    #[test]
    fn any_trusted_key_verifies_for_rotation() {
        let mut v = Verifier::new();
        v.add_hs256(b"old-secret-old-secret-old-secret");
        v.add_hs256(SECRET);
        v.add_eddsa_public_pem(ED_PUBLIC_2.as_bytes()).unwrap();
        v.add_eddsa_public_pem(ED_PUBLIC_1.as_bytes()).unwrap();
        let hs = mint_hs256(SECRET, &claims()).unwrap();
        let ed = mint_eddsa(ED_PRIVATE_1.as_bytes(), &claims()).unwrap();
        assert_eq!(v.verify(&hs, NOW), Ok(claims()));
        assert_eq!(v.verify(&ed, NOW), Ok(claims()));
    }

    #[test]
    fn alg_none_and_other_algorithms_are_refused() {
        let payload = b64(serde_json::to_vec(&claims()).unwrap().as_slice());
        let mut v = hs_verifier();
        v.add_eddsa_public_pem(ED_PUBLIC_1.as_bytes()).unwrap();
        for alg in ["none", "None", "NONE", "HS512", "RS256", "ES256", "hs256", "eddsa"] {
            let header = b64(json!({"alg": alg, "typ": "JWT"}).to_string().as_bytes());
            for sig in ["", "c2lnbmF0dXJl"] {
                let token = format!("{header}.{payload}.{sig}");
                let err = v.verify(&token, NOW).unwrap_err();
                assert_eq!(err, AuthError::UnsupportedAlgorithm { alg: alg.into() });
                assert_eq!(err.code(), "bad_token");
                assert_eq!(err.http_status(), 401);
            }
        }
        // A real HS512 token is refused too, even though its secret is trusted.
        let hs512 =
            jsonwebtoken::encode(&Header::new(Algorithm::HS512), &claims(), &EncodingKey::from_secret(SECRET)).unwrap();
        assert_eq!(v.verify(&hs512, NOW), Err(AuthError::UnsupportedAlgorithm { alg: "HS512".into() }));
        // Header without alg, or with a non-string alg.
        for header in [json!({"typ": "JWT"}), json!({"alg": 5})] {
            let token = format!("{}.{payload}.", b64(header.to_string().as_bytes()));
            assert!(matches!(v.verify(&token, NOW), Err(AuthError::Malformed { part: "header", .. })));
        }
    }

    #[test]
    fn tampered_payload_is_refused() {
        let token = mint_hs256(SECRET, &claims()).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let mut more = claims();
        more.symbols = Grant::All;
        let forged = b64(serde_json::to_vec(&more).unwrap().as_slice());
        let tampered = format!("{}.{}.{}", parts[0], forged, parts[2]);
        assert_eq!(hs_verifier().verify(&tampered, NOW), Err(AuthError::BadSignature));

        let token = mint_eddsa(ED_PRIVATE_1.as_bytes(), &claims()).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let tampered = format!("{}.{}.{}", parts[0], forged, parts[2]);
        assert_eq!(ed_verifier().verify(&tampered, NOW), Err(AuthError::BadSignature));
    }

    #[test]
    fn wrong_key_is_refused() {
        let token = mint_hs256(b"another-secret-another-secret-xx", &claims()).unwrap();
        let err = hs_verifier().verify(&token, NOW).unwrap_err();
        assert_eq!(err, AuthError::BadSignature);
        assert_eq!(err.code(), "bad_token");

        let token = mint_eddsa(ED_PRIVATE_2.as_bytes(), &claims()).unwrap();
        assert_eq!(ed_verifier().verify(&token, NOW), Err(AuthError::BadSignature));

        // A kind of key the server does not have at all.
        assert_eq!(hs_verifier().verify(&token, NOW), Err(AuthError::NoKeyForAlgorithm { alg: "EdDSA" }));
        let hs = mint_hs256(SECRET, &claims()).unwrap();
        assert_eq!(ed_verifier().verify(&hs, NOW), Err(AuthError::NoKeyForAlgorithm { alg: "HS256" }));
        assert_eq!(Verifier::new().verify(&hs, NOW), Err(AuthError::NoKeyForAlgorithm { alg: "HS256" }));
    }

    #[test]
    fn algorithm_confusion_is_refused() {
        // An attacker signs an HS256 token using the server's public key as the HMAC secret:
        // the PEM text, and the raw DER inside it.
        let der = base64::engine::general_purpose::STANDARD.decode(ED_PUBLIC_1.lines().nth(1).unwrap()).unwrap();
        let raw_point = &der[der.len() - 32..];
        for secret in [ED_PUBLIC_1.as_bytes(), &der[..], raw_point] {
            let token = mint_hs256(secret, &claims()).unwrap();
            assert_eq!(ed_verifier().verify(&token, NOW), Err(AuthError::NoKeyForAlgorithm { alg: "HS256" }));
            let mut both = ed_verifier();
            both.add_hs256(SECRET);
            assert_eq!(both.verify(&token, NOW), Err(AuthError::BadSignature));
        }
    }

    #[test]
    fn expiry_uses_the_given_time_with_leeway() {
        let mut c = claims();
        c.exp = NOW;
        let token = mint_hs256(SECRET, &c).unwrap();
        let v = hs_verifier();
        assert!(v.verify(&token, NOW).is_ok());
        assert!(v.verify(&token, NOW + CLOCK_LEEWAY_SECS - 1).is_ok());
        let err = v.verify(&token, NOW + CLOCK_LEEWAY_SECS).unwrap_err();
        assert_eq!(err, AuthError::Expired { exp: NOW, now: NOW + CLOCK_LEEWAY_SECS });
        assert_eq!(err.code(), "expired_token");
        assert_eq!(err.http_status(), 401);
        // Far in the past, by the token's own standard: the system clock plays no part.
        c.exp = 10;
        let token = mint_hs256(SECRET, &c).unwrap();
        assert!(v.verify(&token, 0).is_ok());
        assert!(matches!(v.verify(&token, 41), Err(AuthError::Expired { .. })));
        // exp near u64::MAX does not overflow.
        c.exp = u64::MAX;
        let token = mint_hs256(SECRET, &c).unwrap();
        assert!(v.verify(&token, u64::MAX - 1).is_ok());
    }

    #[test]
    fn not_before_is_checked_with_leeway() {
        let mut p = full_payload();
        p["nbf"] = json!(NOW + 100);
        let token = hs_token_for(&p);
        let v = hs_verifier();
        assert_eq!(v.verify(&token, NOW), Err(AuthError::NotYetValid { nbf: NOW + 100, now: NOW }));
        assert!(v.verify(&token, NOW + 70).is_ok());
    }

    #[test]
    fn missing_claims_are_named() {
        let v = hs_verifier();
        assert!(v.verify(&hs_token_for(&full_payload()), NOW).is_ok());
        for claim in ["sub", "exp", "channels", "symbols"] {
            let mut p = full_payload();
            p.as_object_mut().unwrap().remove(claim);
            let err = v.verify(&hs_token_for(&p), NOW).unwrap_err();
            assert_eq!(err, AuthError::MissingClaim { claim }, "{claim}");
            assert_eq!(err.code(), "bad_token");
            let mut p = full_payload();
            p[claim] = serde_json::Value::Null;
            assert_eq!(v.verify(&hs_token_for(&p), NOW), Err(AuthError::MissingClaim { claim }));
        }
        let mut p = full_payload();
        p["sub"] = json!("");
        assert_eq!(v.verify(&hs_token_for(&p), NOW), Err(AuthError::MissingClaim { claim: "sub" }));
    }

    #[test]
    fn ill_typed_claims_are_named() {
        let v = hs_verifier();
        for (claim, value) in [
            ("channels", json!("trades")),
            ("symbols", json!(5)),
            ("symbols", json!(["AAPL", 5])),
            ("exp", json!("tomorrow")),
            ("exp", json!(-1)),
            ("sub", json!(42)),
            ("roles", json!("admin")),
            ("home", json!(["us-east-1"])),
            ("nbf", json!("now")),
        ] {
            let mut p = full_payload();
            p[claim] = value;
            match v.verify(&hs_token_for(&p), NOW) {
                Err(AuthError::InvalidClaim { claim: got, .. }) => assert_eq!(got, claim),
                other => panic!("{claim}: {other:?}"),
            }
        }
        // A payload that is JSON but not an object.
        let token = hs_token_for(&json!([1, 2]));
        assert!(matches!(v.verify(&token, NOW), Err(AuthError::Malformed { part: "payload", .. })));
    }

    #[test]
    fn audience_is_refused() {
        let mut p = full_payload();
        p["aud"] = json!("some-other-service");
        assert_eq!(hs_verifier().verify(&hs_token_for(&p), NOW), Err(AuthError::AudienceNotAccepted));
    }

    #[test]
    fn optional_claims_default() {
        let claims = hs_verifier().verify(&hs_token_for(&full_payload()), NOW).unwrap();
        assert_eq!(claims.home, None);
        assert!(claims.roles.is_empty());
        assert_eq!(claims.channels, Grant::All);
        // Unknown claims are ignored.
        let mut p = full_payload();
        p["iat"] = json!(NOW);
        p["custom"] = json!({"x": 1});
        assert!(hs_verifier().verify(&hs_token_for(&p), NOW).is_ok());
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let v = hs_verifier();
        assert_eq!(v.verify("", NOW), Err(AuthError::MissingToken));
        let good = mint_hs256(SECRET, &claims()).unwrap();
        let parts: Vec<&str> = good.split('.').collect();
        for bad in [
            "abc".to_owned(),
            "a.b".to_owned(),
            "a.b.c.d".to_owned(),
            format!("{good}."),
            "...".to_owned(),
            "!!!.@@@.###".to_owned(),
            format!("{}.{}.{}", b64(b"not json"), parts[1], parts[2]),
            format!("{}.!!!.{}", parts[0], parts[2]),
            format!("{}.{}.!!!", parts[0], parts[1]),
            format!("{}.{}.{}", parts[0], b64(b"{not json"), parts[2]),
        ] {
            let err = v.verify(&bad, NOW).unwrap_err();
            assert!(matches!(err, AuthError::Malformed { .. } | AuthError::BadSignature), "{bad}: {err:?}");
            assert_eq!(err.code(), "bad_token");
        }
        let long = "a".repeat(MAX_TOKEN_LEN + 1);
        assert_eq!(v.verify(&long, NOW), Err(AuthError::TooLong { len: MAX_TOKEN_LEN + 1, max: MAX_TOKEN_LEN }));
        let crit = format!("{}.{}.{}", b64(br#"{"alg":"HS256","crit":["exp"]}"#), parts[1], parts[2]);
        assert!(matches!(v.verify(&crit, NOW), Err(AuthError::Malformed { part: "header", .. })));
    }

    #[test]
    fn bad_keys_are_refused_up_front() {
        let mut v = Verifier::new();
        let err = v.add_eddsa_public_pem(ED_PRIVATE_1.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("private key"), "{err}");
        assert_eq!(err.code(), "bad_key");
        assert_eq!(err.http_status(), 500);
        assert!(v.add_eddsa_public_pem(b"not a pem").is_err());
        assert!(v.add_eddsa_public_pem(b"").is_err());
        // A well-formed SPKI block for Ed25519 whose key is 16 bytes, not 32: jsonwebtoken
        // would panic on it at verification time, so it must be refused here.
        let mut der = vec![0x30, 0x1a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x11, 0x00];
        der.extend_from_slice(&[7u8; 16]);
        let short = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(&der)
        );
        assert!(v.add_eddsa_public_pem(short.as_bytes()).is_err());
        // 32 bytes, but y = 2 is not on the curve.
        let mut der = vec![0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00, 2];
        der.extend_from_slice(&[0u8; 31]);
        let off_curve = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(&der)
        );
        let err = v.add_eddsa_public_pem(off_curve.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("not a valid ed25519 point"), "{err}");
        assert_eq!(format!("{v:?}"), "Verifier { hs256_keys: 0, eddsa_keys: 0 }");

        v.add_hs256(b"");
        assert_eq!(format!("{v:?}"), "Verifier { hs256_keys: 0, eddsa_keys: 0 }");

        assert!(matches!(mint_eddsa(ED_PUBLIC_1.as_bytes(), &claims()), Err(AuthError::Key { .. })));
        assert!(matches!(mint_hs256(b"", &claims()), Err(AuthError::Key { .. })));
    }

    #[test]
    fn debug_hides_secrets() {
        let dbg = format!("{:?}", hs_verifier());
        assert_eq!(dbg, "Verifier { hs256_keys: 1, eddsa_keys: 0 }");
    }

    #[test]
    fn grant_serde() {
        assert_eq!(serde_json::to_string(&Grant::All).unwrap(), r#""*""#);
        assert_eq!(serde_json::to_string(&Grant::List(vec!["a".into()])).unwrap(), r#"["a"]"#);
        assert_eq!(serde_json::from_str::<Grant>(r#""*""#).unwrap(), Grant::All);
        assert_eq!(serde_json::from_str::<Grant>(r#"["*","x"]"#).unwrap(), Grant::List(vec!["*".into(), "x".into()]));
        assert_eq!(serde_json::from_str::<Grant>("[]").unwrap(), Grant::List(vec![]));
        for bad in [r#""trades""#, "5", "null", "{}", "[1]", r#""""#] {
            assert!(serde_json::from_str::<Grant>(bad).is_err(), "{bad}");
        }
        // Claims: roles and home are optional and left out when empty.
        let c = Claims { home: None, roles: vec![], ..claims() };
        let s = serde_json::to_value(&c).unwrap();
        assert_eq!(s.get("home"), None);
        assert_eq!(s.get("roles"), None);
        assert_eq!(serde_json::from_value::<Claims>(s).unwrap(), c);
    }

    fn with_channels(channels: Grant) -> Claims {
        Claims { channels, ..claims() }
    }

    fn with_symbols(items: &[&str]) -> Claims {
        Claims { symbols: Grant::List(items.iter().map(|s| s.to_string()).collect()), ..claims() }
    }

    #[test]
    fn channel_entitlements() {
        let list = |items: &[&str]| Grant::List(items.iter().map(|s| s.to_string()).collect());
        // (grant, requested, allowed)
        let table: &[(Grant, &str, bool)] = &[
            (Grant::All, "trades", true),
            (Grant::All, "quotes", true),
            (Grant::All, "book", true),
            (Grant::All, "status", true),
            (Grant::All, "*", true),
            (Grant::All, "orders", false),
            (Grant::All, "tradez", false),
            (list(&["*"]), "book", true),
            (list(&["*"]), "orders", false),
            (list(&["*"]), "*", true),
            (list(&["*", "orders"]), "orders", true),
            (list(&["orders"]), "orders", true),
            (list(&["orders"]), "trades", false),
            (list(&["orders"]), "*", false),
            (list(&["trades"]), "trades", true),
            (list(&["trades"]), "quotes", false),
            (list(&["trades"]), "*", false),
            (list(&["trades", "quotes", "book", "status"]), "*", true),
            (list(&["Trades"]), "trades", false),
            (list(&[]), "trades", false),
        ];
        for (grant, requested, allowed) in table {
            assert_eq!(
                with_channels(grant.clone()).allows_channel(requested),
                *allowed,
                "grant {grant:?}, requested {requested}"
            );
        }
    }

    #[test]
    fn orders_is_never_granted_by_star() {
        for grant in [Grant::All, Grant::List(vec!["*".into()])] {
            assert!(!with_channels(grant.clone()).allows_channel("orders"));
            // Requesting "*" does not reach orders either: it means public channels only.
            assert!(with_channels(grant).allows_channel("*"));
        }
    }

    #[test]
    fn symbol_entitlements() {
        // (grant list, requested, allowed)
        let table: &[(&[&str], &str, bool)] = &[
            (&["AAPL"], "AAPL", true),
            (&["AAPL"], "AAPLX", false),
            (&["AAPL"], "aapl", false),
            (&["AAPL"], "AAPL*", false),
            (&["AAPL"], "*", false),
            (&["BTC-*"], "BTC-USD", true),
            (&["BTC-*"], "BTC-", true),
            (&["BTC-*"], "BTC", false),
            (&["BTC-*"], "ETH-USD", false),
            (&["BTC-*"], "BTC-*", true),
            (&["BTC-*"], "BTC-U*", true),
            (&["BTC-*"], "B*", false),
            (&["BTC-*"], "*", false),
            (&["B*"], "BTC-*", true),
            (&["B*"], "BTC-USD", true),
            (&["B*"], "ETH-*", false),
            (&["BTC-USD"], "BTC-*", false),
            (&["BTC-USD", "BTC-EUR"], "BTC-*", false),
            (&["*"], "*", true),
            (&["*"], "ANYTHING", true),
            (&["*"], "ETH-*", true),
            (&["AAPL", "ETH-*"], "ETH-USD", true),
            (&["AAPL", "ETH-*"], "AAPL", true),
            (&["AAPL", "ETH-*"], "MSFT", false),
            (&[], "AAPL", false),
        ];
        for (grant, requested, allowed) in table {
            assert_eq!(
                with_symbols(grant).allows_symbol(requested),
                *allowed,
                "grant {grant:?}, requested {requested}"
            );
        }
        let all = Claims { symbols: Grant::All, ..claims() };
        for requested in ["*", "AAPL", "BTC-*", ""] {
            assert!(all.allows_symbol(requested), "{requested}");
        }
    }

    #[test]
    fn roles() {
        assert!(claims().has_role("admin"));
        assert!(!claims().has_role("Admin"));
        assert!(!Claims { roles: vec![], ..claims() }.has_role("admin"));
    }

    #[test]
    fn token_location() {
        let t = |q: Option<&str>, h: Option<&str>| token_from_request(q, h);
        assert_eq!(t(Some("token=abc"), None).as_deref(), Some("abc"));
        assert_eq!(t(Some("?token=abc"), None).as_deref(), Some("abc"));
        assert_eq!(t(Some("encoding=json&token=a.b.c&batch=1"), None).as_deref(), Some("a.b.c"));
        assert_eq!(t(Some("token=a%2Eb%2ec"), None).as_deref(), Some("a.b.c"));
        assert_eq!(t(Some("tok%65n=x"), None).as_deref(), Some("x"));
        assert_eq!(t(Some("token=a%zz"), None).as_deref(), Some("a%zz"));
        assert_eq!(t(Some("token=a%2"), None).as_deref(), Some("a%2"));
        assert_eq!(t(Some("token=a+b"), None).as_deref(), Some("a b"));
        assert_eq!(t(Some("token=%ff"), None).as_deref(), Some("\u{fffd}"));
        assert_eq!(t(Some("token=&token=second"), None).as_deref(), Some("second"));
        assert_eq!(t(Some("xtoken=abc"), None), None);
        assert_eq!(t(Some("token"), None), None);
        assert_eq!(t(Some(""), None), None);
        assert_eq!(t(None, None), None);

        assert_eq!(t(None, Some("Bearer abc")).as_deref(), Some("abc"));
        assert_eq!(t(None, Some("bearer   abc  ")).as_deref(), Some("abc"));
        assert_eq!(t(None, Some("BEARER\tabc")).as_deref(), Some("abc"));
        assert_eq!(t(None, Some("Bearer")), None);
        assert_eq!(t(None, Some("Bearer   ")), None);
        assert_eq!(t(None, Some("Basic dXNlcjpwYXNz")), None);
        assert_eq!(t(None, Some("abc")), None);

        // The query wins; an empty query token falls back to the header.
        assert_eq!(t(Some("token=q"), Some("Bearer h")).as_deref(), Some("q"));
        assert_eq!(t(Some("token="), Some("Bearer h")).as_deref(), Some("h"));
        assert_eq!(t(Some("encoding=binary"), Some("Bearer h")).as_deref(), Some("h"));
    }

    #[test]
    fn error_codes_and_messages() {
        let all = [
            AuthError::MissingToken,
            AuthError::TooLong { len: 1, max: 0 },
            AuthError::Malformed { part: "token", reason: "x".into() },
            AuthError::UnsupportedAlgorithm { alg: "none".into() },
            AuthError::NoKeyForAlgorithm { alg: "EdDSA" },
            AuthError::BadSignature,
            AuthError::Expired { exp: 1, now: 2 },
            AuthError::NotYetValid { nbf: 2, now: 1 },
            AuthError::MissingClaim { claim: "sub" },
            AuthError::InvalidClaim { claim: "exp", reason: "x".into() },
            AuthError::AudienceNotAccepted,
            AuthError::Key { reason: "x".into() },
            AuthError::Mint { reason: "x".into() },
        ];
        for e in all {
            let msg = e.to_string();
            assert!(msg.starts_with(|c: char| c.is_ascii_lowercase()), "{msg}");
            assert!(!msg.ends_with('.'), "{msg}");
            assert!(msg.contains("; "), "says what to do: {msg}");
            assert!(["missing_token", "bad_token", "expired_token", "bad_key", "mint_failed"].contains(&e.code()));
        }
        assert_eq!(AuthError::MissingToken.code(), "missing_token");
        assert_eq!(AuthError::MissingToken.http_status(), 401);
    }

    proptest! {
        /// Arbitrary input never panics (STYLE.md habit 10: the JWT-parsing fuzz body).
        #[test]
        fn arbitrary_tokens_never_panic(token in "\\PC{0,300}") {
            let mut v = hs_verifier();
            v.add_eddsa_public_pem(ED_PUBLIC_1.as_bytes()).unwrap();
            let _ = v.verify(&token, NOW);
        }

        /// Changing any one character of a valid token never yields different claims.
        #[test]
        fn mutated_tokens_never_verify_to_other_claims(
            at in any::<prop::sample::Index>(),
            ch in prop::sample::select(b"ABCabc0189-_.=+/ ".to_vec()),
            eddsa in any::<bool>(),
        ) {
            let token = if eddsa {
                mint_eddsa(ED_PRIVATE_1.as_bytes(), &claims()).unwrap()
            } else {
                mint_hs256(SECRET, &claims()).unwrap()
            };
            let mut bytes = token.clone().into_bytes();
            let i = at.index(bytes.len());
            bytes[i] = ch;
            let mutated = String::from_utf8(bytes).unwrap();
            let mut v = hs_verifier();
            v.add_eddsa_public_pem(ED_PUBLIC_1.as_bytes()).unwrap();
            match v.verify(&mutated, NOW) {
                Ok(c) => {
                    prop_assert_eq!(c, claims());
                    prop_assert_eq!(mutated, token);
                }
                Err(e) => prop_assert_eq!(e.http_status(), 401),
            }
        }
    }
}
