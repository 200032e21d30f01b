//! Bearer API keys: `zt-` and 32 random bytes (base64url), shown once when made; the database
//! keeps only the SHA-256 of the key (and its first characters, to tell keys apart in lists).
//! A plain hash is enough: the keys are random and long, so there is nothing to brute-force.

use base64::Engine as _;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::{db::KeyRow, ServerError, Store};

const KEY_PREFIX: &str = "zt-";

pub fn hash_key(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn random_b64(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

/// Random lowercase hex, for ids.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new key: its id and the secret (the only time the secret exists outside the client).
pub async fn create(store: &Store, name: &str) -> Result<(String, String), ServerError> {
    if name.trim().is_empty() || name.len() > 100 {
        return Err(ServerError::Config(
            "a key's name must be 1 to 100 characters (e.g. --name alice)".into(),
        ));
    }
    if store
        .list_keys()
        .await?
        .iter()
        .any(|k| k.name == name && k.revoked_at.is_none())
    {
        return Err(ServerError::Config(format!(
            "a live key is already named '{name}': choose another name or revoke it first"
        )));
    }
    let secret = format!("{KEY_PREFIX}{}", random_b64(32));
    let id = format!("key_{}", random_hex(8));
    let prefix: String = secret.chars().take(KEY_PREFIX.len() + 6).collect();
    store
        .insert_key(&id, name, &hash_key(&secret), &prefix)
        .await?;
    Ok((id, secret))
}

pub async fn list(store: &Store) -> Result<Vec<KeyRow>, ServerError> {
    store.list_keys().await
}

/// Revokes by id or name.
pub async fn revoke(store: &Store, id_or_name: &str) -> Result<(), ServerError> {
    if store.revoke_key(id_or_name).await? {
        Ok(())
    } else {
        Err(ServerError::Config(format!(
            "no live key has the id or name '{id_or_name}' (see `zoetrope keys list`)"
        )))
    }
}

/// The key id a bearer token belongs to.
pub async fn authenticate(store: &Store, token: &str) -> Result<Option<String>, ServerError> {
    if !token.starts_with(KEY_PREFIX) || token.len() > 200 {
        return Ok(None);
    }
    store.key_by_hash(&hash_key(token)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_works_until_revoked_and_only_its_hash_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(None, &dir.path().join("q.sqlite"))
            .await
            .unwrap();
        let (id, secret) = create(&store, "alice").await.unwrap();
        assert!(secret.starts_with("zt-") && secret.len() > 40);
        assert_eq!(
            authenticate(&store, &secret).await.unwrap(),
            Some(id.clone())
        );
        assert_eq!(authenticate(&store, "zt-wrong").await.unwrap(), None);
        assert!(
            create(&store, "alice").await.is_err(),
            "duplicate live name"
        );
        let db = std::fs::read(dir.path().join("q.sqlite")).unwrap();
        let wal = std::fs::read(dir.path().join("q.sqlite-wal")).unwrap_or_default();
        let needle = secret.as_bytes();
        for bytes in [&db, &wal] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "secret stored"
            );
        }
        revoke(&store, "alice").await.unwrap();
        assert_eq!(authenticate(&store, &secret).await.unwrap(), None);
        assert!(revoke(&store, "alice").await.is_err());
        assert!(list(&store).await.unwrap()[0].revoked_at.is_some());
    }
}
