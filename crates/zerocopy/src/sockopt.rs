//! A socket option neither rustix nor socket2 sets: `TCP_NOTSENT_LOWAT`.
//!
//! With it, a TCP socket reports itself writable only while fewer than the given number of
//! bytes wait in it unsent, so a writer that fills sockets as fast as they accept (the edge
//! sending a large body) hands the kernel a bounded step at a time and turns to its other
//! connections in between, instead of queueing a whole body in one socket's buffer.

use std::io;
use std::os::fd::{AsFd, AsRawFd};

/// Sets `TCP_NOTSENT_LOWAT` on `socket` to `bytes`.
pub fn set_notsent_lowat(socket: impl AsFd, bytes: u32) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "bound over i32::MAX"))?;
    let fd = socket.as_fd();
    // SAFETY: `fd` is an open descriptor borrowed for the call, and the option value is a
    // `c_int` whose size is the length passed; the kernel only reads it.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            std::ptr::from_ref(&value).cast(),
            socklen::<libc::c_int>(),
        )
    };
    match r {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// The `TCP_NOTSENT_LOWAT` of `socket`.
pub fn notsent_lowat(socket: impl AsFd) -> io::Result<u32> {
    let fd = socket.as_fd();
    let mut value: libc::c_int = 0;
    let mut len = socklen::<libc::c_int>();
    // SAFETY: as above; the kernel writes at most `len` bytes into `value` and the new
    // length into `len`, both live for the call.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            std::ptr::from_mut(&mut value).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // The kernel keeps the value as an unsigned 32-bit number (the default, "no bound", reads
    // back as -1 here).
    Ok(value as u32)
}

fn socklen<T>() -> libc::socklen_t {
    // A c_int is 4 bytes: no truncation.
    std::mem::size_of::<T>() as libc::socklen_t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_bound_is_set_and_read_back() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        set_notsent_lowat(&server, 128 * 1024).unwrap();
        assert_eq!(notsent_lowat(&server).unwrap(), 128 * 1024);
        // The other end keeps the kernel's setting.
        assert_ne!(notsent_lowat(&client).unwrap(), 128 * 1024);
        // Not a TCP socket: the kernel's error, not a panic.
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(set_notsent_lowat(&udp, 4096).is_err());
    }
}
