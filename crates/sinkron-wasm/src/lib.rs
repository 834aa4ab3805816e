//! The browser build of the sync engine: the core [`Engine`] for JavaScript behind one
//! function, `sinkron_call`.
//!
//! A call is a JSON object naming what happened or what is wanted (`{"t":"write",…}`),
//! decoded in one place ([`interop`]) with typed errors: a bad number is refused, not
//! coerced. The answer carries the call's result, every command the engine has for the
//! driver and its next deadline, as one JSON text ([`convert`] writes it, record values
//! embedded raw). There is no sync decision here; the TypeScript driver in
//! `packages/sinkron` executes the commands.
//!
//! Size matters on mobile: no serde, no `f64` formatting, no `core::fmt`, and in the browser
//! no std at all (`alloc` only, a small allocator, a panic handler that just traps). With one
//! text in and one out, the module needs no generated glue: it exports three plain functions
//! and its memory, and `packages/sinkron/src/engine.ts` (a few lines) loads and calls it.

#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

mod convert;
mod interop;
mod json;
#[cfg(test)]
mod props;

use alloc::string::String;

/// A panic is a bug (inputs are decoded without panicking); trapping keeps std's panic
/// formatting out of the module.
#[cfg(target_arch = "wasm32")]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    core::arch::wasm32::unreachable()
}

#[cfg(target_arch = "wasm32")]
#[global_allocator]
// SAFETY: WebAssembly in a page without threads runs this module on one thread only.
static ALLOCATOR: lol_alloc::AssumeSingleThreaded<lol_alloc::FreeListAllocator> =
    unsafe { lol_alloc::AssumeSingleThreaded::new(lol_alloc::FreeListAllocator::new()) };

use alloc::vec;
use alloc::vec::Vec;
use core::cell::UnsafeCell;
use sinkron_core::Engine;

/// The engine of this instance of the module, and its last answer (kept until the next call,
/// for JavaScript to read). Each client instantiates the module anew and so has an engine of
/// its own, freed with its instance: the engine is never dropped, which keeps its drop code
/// out of the module.
struct Sinkron {
    engine: Option<Engine>,
    answer: String,
}

struct Instance(UnsafeCell<Sinkron>);

// SAFETY: WebAssembly in a page without threads runs this module on one thread only, and on
// the host nothing but these functions touches it.
unsafe impl Sync for Instance {}

static INSTANCE: Instance = Instance(UnsafeCell::new(Sinkron {
    engine: None,
    answer: String::new(),
}));

/// A buffer of `len` bytes for the caller to write a call into; [`sinkron_call`] takes it
/// back.
#[no_mangle]
pub extern "C" fn sinkron_buffer(len: usize) -> *mut u8 {
    // `vec![x; n]` has a capacity of exactly `n`, which `sinkron_call` relies on.
    let mut buffer = vec![0u8; len];
    let at = buffer.as_mut_ptr();
    core::mem::forget(buffer);
    at
}

/// Runs one call: `buffer` (from [`sinkron_buffer`], `len` bytes, taken back here) holds the
/// call's JSON text in its first `input_len` bytes and a reply's body in the rest. Returns
/// where the answer is (valid until the next call); its length is [`sinkron_answer_len`].
///
/// # Safety
/// `buffer` and `len` come from one [`sinkron_buffer`] call; both parts are valid UTF-8;
/// calls are not made from two threads at once.
#[no_mangle]
pub unsafe extern "C" fn sinkron_call(buffer: *mut u8, len: usize, input_len: usize) -> *const u8 {
    // SAFETY: one call at a time (above); the buffer is a vector of length and capacity
    // `len`, as `sinkron_buffer(len)` made it.
    let (sinkron, bytes) = unsafe {
        (
            &mut *INSTANCE.0.get(),
            Vec::from_raw_parts(buffer, len, len),
        )
    };
    let (input, body) = bytes.split_at(input_len.min(len));
    // SAFETY: the caller writes UTF-8 (`TextEncoder`'s output always is) and splits it where
    // the call ends, between characters. Not checked here: the check would cost the module
    // more than half a kilobyte.
    let (input, body) = unsafe {
        (
            core::str::from_utf8_unchecked(input),
            core::str::from_utf8_unchecked(body),
        )
    };
    sinkron.answer = interop::call(&mut sinkron.engine, input, body);
    sinkron.answer.as_ptr()
}

/// The length in bytes of the last answer.
///
/// # Safety
/// Not called from two threads at once, nor during a call.
#[no_mangle]
pub unsafe extern "C" fn sinkron_answer_len() -> usize {
    // SAFETY: as the caller promises, nothing else touches the instance now.
    unsafe { (&*INSTANCE.0.get()).answer.len() }
}
