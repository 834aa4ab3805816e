//! Password hashing for the built-in accounts: argon2id (the `argon2` crate's defaults:
//! 19 MiB, 2 passes) on a few dedicated threads, each reusing one buffer for the hash's
//! memory.
//!
//! A hash needs its 19 MiB all at once. Allocated afresh per attempt on whatever thread runs
//! it, those buffers pile up in the allocator's per-thread arenas: a flood of wrong logins
//! grew the server to several GB and it stayed there. Here the cost is fixed: at most one
//! buffer per hashing thread (one thread per core), lent from a shared pool to each job and
//! kept while sign-ins keep coming; the first thread to wait [`IDLE`] for a job drops every
//! buffer in the pool. Jobs wait in a bounded queue; a full queue is the caller's 429. It
//! owns the hashing threads and the PHC strings; it must not know about requests, users or
//! throttles.

use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use rand::TryRngCore;

/// How long a hashing thread keeps its buffer without work.
pub const IDLE: Duration = Duration::from_secs(5);

type Job = Box<dyn FnOnce(&mut Vec<Block>) + Send>;

/// Why a job did not run.
#[derive(Debug, PartialEq, Eq)]
pub enum Busy {
    /// The queue is full: try again later (429).
    Full,
    /// The hashing threads are gone (only while shutting down).
    Gone,
}

/// The hashing threads and their queue; the threads start with the first job and end when
/// this is dropped.
pub struct Hashers {
    threads: usize,
    queue_max: usize,
    queue: OnceLock<SyncSender<Job>>,
}

impl Hashers {
    pub fn new(threads: usize, queue_max: usize) -> Self {
        Self {
            threads: threads.max(1),
            queue_max,
            queue: OnceLock::new(),
        }
    }

    /// Queues `job` for a hashing thread, which runs it with its memory (see [`hash`] and
    /// [`verify`]); its result arrives on the receiver. Refused at once when `queue_max`
    /// jobs are already waiting.
    pub fn submit<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Vec<Block>) -> T + Send + 'static,
    ) -> Result<tokio::sync::oneshot::Receiver<T>, Busy> {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |memory| {
            let _ = done.send(job(memory));
        });
        match self.queue().try_send(job) {
            Ok(()) => Ok(result),
            Err(TrySendError::Full(_)) => Err(Busy::Full),
            Err(TrySendError::Disconnected(_)) => Err(Busy::Gone),
        }
    }

    fn queue(&self) -> &SyncSender<Job> {
        self.queue.get_or_init(|| {
            let (sender, receiver) = mpsc::sync_channel::<Job>(self.queue_max);
            let shared = Arc::new(Workers {
                receiver: Mutex::new(receiver),
                pool: Mutex::new(Vec::new()),
            });
            for i in 0..self.threads {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("sinkron-hash-{i}"))
                    .spawn(move || work(&shared))
                    .expect("spawn a hashing thread");
            }
            sender
        })
    }
}

/// What the hashing threads share: the queue's receiving end (one thread waits on it at a
/// time) and the buffers not in use.
struct Workers {
    receiver: Mutex<mpsc::Receiver<Job>>,
    pool: Mutex<Vec<Vec<Block>>>,
}

/// One hashing thread: takes jobs until the queue is dropped, each with a buffer from the
/// pool (given back after). Waiting [`IDLE`] without a job empties the pool, whichever
/// thread waited: the buffers of every idle thread go.
fn work(shared: &Workers) {
    loop {
        let next = shared
            .receiver
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .recv_timeout(IDLE);
        let pool = || shared.pool.lock().unwrap_or_else(PoisonError::into_inner);
        match next {
            Ok(job) => {
                let mut memory = pool().pop().unwrap_or_default();
                job(&mut memory);
                pool().push(memory);
            }
            Err(RecvTimeoutError::Timeout) => pool().clear(),
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// `memory` grown to what `params` needs (it is never shrunk while in use).
fn blocks<'a>(memory: &'a mut Vec<Block>, params: &Params) -> &'a mut [Block] {
    let count = params.block_count();
    if memory.len() < count {
        *memory = vec![Block::default(); count];
    }
    &mut memory[..count]
}

/// An argon2id hash of `password` with a random salt, as a PHC string.
pub fn hash(memory: &mut Vec<Block>, password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    rand::rngs::OsRng
        .try_fill_bytes(&mut salt)
        .map_err(|e| e.to_string())?;
    let argon2 = Argon2::default();
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    argon2
        .hash_password_into_with_memory(
            password.as_bytes(),
            &salt,
            &mut out,
            blocks(memory, argon2.params()),
        )
        .map_err(|e| e.to_string())?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(argon2.params()).map_err(|e| e.to_string())?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(|e| e.to_string())?),
    };
    Ok(phc.to_string())
}

/// Whether `password` matches the PHC string `phc` (compared in constant time). Any argon2
/// variant and parameters the string names are honoured.
pub fn verify(memory: &mut Vec<Block>, password: &str, phc: &str) -> bool {
    let mut check = || -> Option<bool> {
        let parsed = PasswordHash::new(phc).ok()?;
        let algorithm = Algorithm::try_from(parsed.algorithm).ok()?;
        let version = parsed
            .version
            .map_or(Ok(Version::default()), Version::try_from);
        let params = Params::try_from(&parsed).ok()?;
        let expected = parsed.hash?;
        let mut salt = [0u8; 64];
        let salt = parsed.salt?.decode_b64(&mut salt).ok()?;
        let mut out = vec![0u8; expected.len()];
        Argon2::new(algorithm, version.ok()?, params.clone())
            .hash_password_into_with_memory(
                password.as_bytes(),
                salt,
                &mut out,
                blocks(memory, &params),
            )
            .ok()?;
        // `Output`'s equality is constant-time.
        Some(Output::new(&out).ok()? == expected)
    };
    check().unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordHasher, PasswordVerifier};

    #[test]
    fn hashes_verify_both_ways_with_the_crates_own_hasher() {
        let mut memory = Vec::new();
        let ours = hash(&mut memory, "correct horse").expect("hash");
        assert!(ours.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(verify(&mut memory, "correct horse", &ours));
        assert!(!verify(&mut memory, "correct horsf", &ours));
        // What the crate made before (stored hashes of existing accounts) still verifies.
        let parsed = PasswordHash::new(&ours).expect("phc");
        assert!(Argon2::default()
            .verify_password(b"correct horse", &parsed)
            .is_ok());
        let salt = SaltString::encode_b64(&[7u8; 16]).expect("salt");
        let theirs = Argon2::default()
            .hash_password(b"battery staple", &salt)
            .expect("hash")
            .to_string();
        assert!(verify(&mut memory, "battery staple", &theirs));
        assert!(!verify(&mut memory, "battery", &theirs));
        assert!(!verify(&mut memory, "battery staple", "not a phc string"));
        assert_eq!(
            memory.len(),
            Params::default().block_count(),
            "one buffer, reused"
        );
    }

    #[tokio::test]
    async fn a_full_queue_is_refused_at_once() {
        let hashers = Hashers::new(1, 1);
        let (hold, held) = std::sync::mpsc::channel::<()>();
        let (started, running) = tokio::sync::oneshot::channel();
        let first = hashers
            .submit(move |_| {
                let _ = started.send(());
                held.recv().ok();
                1
            })
            .expect("queued");
        running.await.expect("the first job runs");
        // The only thread is busy: one job waits in the queue, the next is refused.
        let second = hashers.submit(|_| 2).expect("queued");
        assert_eq!(hashers.submit(|_| 3).err(), Some(Busy::Full));
        hold.send(()).expect("release the first job");
        assert_eq!(first.await, Ok(1));
        assert_eq!(second.await, Ok(2));
    }
}
