//! Opaque handles: numbers handed to C that the registry maps to objects.
//!
//! A handle is `(serial << 4) | tag` cast to a pointer type. It is never
//! dereferenced; serials are never reused, so a stale handle cannot alias a
//! newer object, and the tag catches a handle of the wrong type. Serials
//! start at a random point of a 2^40 range in each process, so a handle
//! cannot be guessed (the first primary is not always the same number).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{Code, Error, Result};

static SERIAL: AtomicUsize = AtomicUsize::new(0);
static SERIAL_BASE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

/// This process's first serial: random (std's hash keys are seeded from
/// the OS's random source), at least 1, leaving room to count up.
fn serial_base() -> usize {
    *SERIAL_BASE.get_or_init(|| {
        use std::hash::BuildHasher;
        let random = std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64) as usize;
        1 + (random & ((1 << 40) - 1))
    })
}

/// Keys are serial numbers we made ourselves (never chosen by a caller), so
/// a multiplicative hash is enough; SipHash would cost every call into the
/// library more than the lookup itself.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_usize(&mut self, key: usize) {
        self.0 = (key as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// A table of live objects of one type.
pub struct Registry<T> {
    objects: Mutex<HashMap<usize, Arc<T>, BuildHasherDefault<KeyHasher>>>,
    tag: usize,
    what: &'static str,
}

impl<T> Registry<T> {
    pub fn new(tag: usize, what: &'static str) -> Registry<T> {
        Registry { objects: Mutex::new(HashMap::default()), tag, what }
    }

    /// Registers `object` and returns its handle.
    pub fn insert<H>(&self, object: T) -> *mut H {
        let key = ((serial_base() + SERIAL.fetch_add(1, Ordering::Relaxed)) << 4) | self.tag;
        self.objects.lock().unwrap_or_else(|p| p.into_inner()).insert(key, Arc::new(object));
        key as *mut H
    }

    /// The object behind `handle`.
    pub fn get<H>(&self, handle: *const H) -> Result<Arc<T>> {
        let key = self.key(handle)?;
        self.objects.lock().unwrap_or_else(|p| p.into_inner()).get(&key).cloned().ok_or_else(|| self.unknown())
    }

    /// Unregisters `handle` and returns its object (dropped by the caller).
    pub fn remove<H>(&self, handle: *const H) -> Result<Arc<T>> {
        let key = self.key(handle)?;
        self.objects.lock().unwrap_or_else(|p| p.into_inner()).remove(&key).ok_or_else(|| self.unknown())
    }

    fn key<H>(&self, handle: *const H) -> Result<usize> {
        if handle.is_null() {
            return Err(Error::new(Code::BadHandle, format!("{} handle is NULL", self.what)));
        }
        let key = handle as usize;
        if key & 0xf != self.tag {
            return Err(self.unknown());
        }
        Ok(key)
    }

    fn unknown(&self) -> Error {
        Error::new(Code::BadHandle, format!("not a live {} handle (unknown, freed, or of another type)", self.what))
    }
}
