//! The allocation-free line formatter that the dumps, the statistics and
//! the abort messages share: a line formatted on the stack, written to a
//! descriptor or appended to the calling thread's dump buffer.

use core::fmt::{self, Write};
use core::ptr;

/// A line formatted on the stack (no allocation), truncated if too long.
pub(crate) struct Line {
    buf: [u8; 512],
    len: usize,
}

impl Line {
    pub(crate) fn new() -> Self {
        Line {
            buf: [0; 512],
            len: 0,
        }
    }

    /// Writes the line to `fd`, retrying short writes (or, for `TO_BUFFER`,
    /// appends it to the buffer of this thread's `into_buffer` call).
    pub(crate) fn write_to(&self, fd: libc::c_int) {
        if fd == TO_BUFFER {
            return append_to_buffer(&self.buf[..self.len]);
        }
        let mut done = 0;
        while done < self.len {
            let rest = &self.buf[done..self.len];
            // SAFETY: `rest` is valid for reads of its length.
            let n = unsafe { libc::write(fd, rest.as_ptr().cast(), rest.len()) };
            if n <= 0 {
                // EINTR: retry; anything else: give up quietly.
                // SAFETY: reading this thread's errno.
                if n < 0 && unsafe { *libc::__errno_location() } == libc::EINTR {
                    continue;
                }
                return;
            }
            done += n as usize;
        }
    }
}

impl Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.buf.len() - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

// ---- lines into a buffer --------------------------------------------------
//
// A dump formats every line on the stack and hands it to `Line::write_to`;
// given the descriptor `TO_BUFFER`, that appends the line to the buffer the
// calling thread registered through `into_buffer` instead of writing it.

/// The descriptor `into_buffer` passes to its writer. No file descriptor is
/// negative, so a C caller's `pool_dump(-2)` is still a write to a bad
/// descriptor: on a thread that is not inside `into_buffer` the buffer
/// below is empty and nothing is written.
const TO_BUFFER: libc::c_int = -2;

std::thread_local! {
    /// This thread's buffer: its start, its room in bytes, and how many
    /// bytes the writer has produced so far (which may exceed the room).
    static BUFFER: core::cell::Cell<(*mut u8, usize, usize)> =
        const { core::cell::Cell::new((ptr::null_mut(), 0, 0)) };
}

/// Runs `write(fd)` with a descriptor whose lines go into `buf`, the way
/// snprintf does it: the first `buf.len() - 1` bytes and a NUL after them
/// (nothing when `buf` is empty). Returns the length of the whole output,
/// NUL not counted. Calls no malloc.
pub(crate) fn into_buffer(buf: &mut [u8], write: impl FnOnce(libc::c_int)) -> usize {
    let room = buf.len().saturating_sub(1);
    let saved = BUFFER.replace((buf.as_mut_ptr(), room, 0));
    write(TO_BUFFER);
    let (_, _, len) = BUFFER.replace(saved);
    if let Some(end) = buf.get_mut(len.min(room)) {
        *end = 0;
    }
    len
}

/// Appends `bytes` to this thread's buffer, as far as it has room.
fn append_to_buffer(bytes: &[u8]) {
    let (start, room, len) = BUFFER.get();
    let n = bytes.len().min(room.saturating_sub(len));
    if n != 0 {
        // SAFETY: `start..start + room` is the slice that `into_buffer`
        // borrows mutably for the whole call (room is 0 outside it),
        // `len + n <= room`, and `bytes` is a stack line, not part of it.
        unsafe { ptr::copy_nonoverlapping(bytes.as_ptr(), start.add(len), n) };
    }
    BUFFER.set((start, room, len + bytes.len()));
}
