//! The ceiling: what this machine can do with no server at all. Writes a
//! pre-encoded WebSocket text frame to N loopback sockets, `batch` frames
//! per write, and measures the CPU per frame. A fanout server cannot beat
//! this for the same writes; how close it gets is what the hub costs.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Instant;

use serde::Serialize;

use crate::BenchError;
use crate::proc;

/// What the ceiling measured.
#[derive(Debug, Clone, Serialize)]
pub struct Ceiling {
    /// Sockets written to.
    pub sockets: usize,
    /// Rounds over every socket.
    pub rounds: usize,
    /// Frames per write.
    pub batch: usize,
    /// Bytes per frame.
    pub frame_bytes: usize,
    /// Wall time per frame, µs.
    pub wall_us_per_frame: f64,
    /// CPU time of the writing thread per frame, µs.
    pub cpu_us_per_frame: f64,
    /// Frames per second.
    pub frames_per_second: f64,
}

/// Runs the ceiling over `sockets` socket pairs.
pub fn run(
    sockets: usize,
    rounds: usize,
    batch: usize,
    frame_bytes: usize,
) -> Result<Ceiling, BenchError> {
    let (_, usable) = proc::raise_fd_limit();
    let sockets = sockets.min((usable as usize / 2).saturating_sub(16)).max(1);
    let listener = TcpListener::bind("127.0.0.1:0").map_err(BenchError::Io)?;
    let local = listener.local_addr().map_err(BenchError::Io)?;
    let mut readers = Vec::with_capacity(sockets);
    let mut writers = Vec::with_capacity(sockets);
    for _ in 0..sockets {
        readers.push(TcpStream::connect(local).map_err(BenchError::Io)?);
        let (s, _) = listener.accept().map_err(BenchError::Io)?;
        s.set_nodelay(true).map_err(BenchError::Io)?;
        writers.push(s);
    }
    let payload = frame_bytes.saturating_sub(2).clamp(1, 125);
    let mut frame = vec![0x81u8, payload as u8];
    frame.extend(std::iter::repeat_n(b'x', payload));
    let write: Vec<u8> = frame.repeat(batch.max(1));
    // Drain the receiving ends on another thread so that buffers never fill.
    let total_bytes = (write.len() * sockets * rounds.div_ceil(batch.max(1))) as u64;
    let drain = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = total_bytes;
        for r in &readers {
            r.set_nonblocking(true).ok();
        }
        while left > 0 {
            let mut progressed = false;
            for mut r in &readers {
                if let Ok(n) = r.read(&mut buf)
                    && n > 0
                {
                    left = left.saturating_sub(n as u64);
                    progressed = true;
                }
            }
            if !progressed {
                std::thread::yield_now();
            }
        }
    });
    let cpu0 = proc::thread_cpu_s();
    let start = Instant::now();
    let writes = rounds.div_ceil(batch.max(1));
    for _ in 0..writes {
        for s in &mut writers {
            s.write_all(&write).map_err(BenchError::Io)?;
        }
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu = proc::thread_cpu_s() - cpu0;
    let _ = drain.join();
    let frames = (writes * batch.max(1) * sockets) as f64;
    Ok(Ceiling {
        sockets,
        rounds: writes * batch.max(1),
        batch: batch.max(1),
        frame_bytes: frame.len(),
        wall_us_per_frame: wall * 1e6 / frames,
        cpu_us_per_frame: cpu * 1e6 / frames,
        frames_per_second: frames / wall,
    })
}
