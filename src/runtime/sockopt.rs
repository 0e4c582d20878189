//! Socket options std's sockets do not expose, set on the file
//! descriptor: TCP keepalive on accepted connections, and a bound on how
//! long sent data may stay unacknowledged on the links to peers.

use std::io;
use std::os::fd::RawFd;

use crate::constants::{KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_PROBES};

fn set(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `value` outlives the call and its size is the one passed; a
    // bad descriptor or option is reported through the return value.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Probes a connection that has been idle for a while, and closes it when
/// the other host stops answering (see `KEEPALIVE_IDLE_S`).
pub fn keepalive(fd: RawFd) -> io::Result<()> {
    set(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
    set(
        fd,
        libc::IPPROTO_TCP,
        libc::TCP_KEEPIDLE,
        KEEPALIVE_IDLE_S as libc::c_int,
    )?;
    set(
        fd,
        libc::IPPROTO_TCP,
        libc::TCP_KEEPINTVL,
        KEEPALIVE_INTERVAL_S as libc::c_int,
    )?;
    set(
        fd,
        libc::IPPROTO_TCP,
        libc::TCP_KEEPCNT,
        KEEPALIVE_PROBES as libc::c_int,
    )
}

/// Fails the connection once sent data has stayed unacknowledged for `ms`
/// milliseconds (TCP_USER_TIMEOUT).
pub fn unacked_timeout(fd: RawFd, ms: u32) -> io::Result<()> {
    let ms = libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX);
    set(fd, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    fn get(fd: RawFd, level: libc::c_int, name: libc::c_int) -> libc::c_int {
        let mut value: libc::c_int = -1;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `value` and `len` outlive the call and describe a c_int.
        let r = unsafe {
            libc::getsockopt(
                fd,
                level,
                name,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(r, 0, "{}", io::Error::last_os_error());
        value
    }

    #[test]
    fn options_are_set_on_the_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let s = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let fd = s.as_raw_fd();
        assert_eq!(get(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE), 0);
        keepalive(fd).unwrap();
        unacked_timeout(fd, 1234).unwrap();
        assert_ne!(get(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE), 0);
        assert_eq!(
            get(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE),
            KEEPALIVE_IDLE_S as libc::c_int
        );
        assert_eq!(
            get(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL),
            KEEPALIVE_INTERVAL_S as libc::c_int
        );
        assert_eq!(
            get(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT),
            KEEPALIVE_PROBES as libc::c_int
        );
        assert_eq!(get(fd, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT), 1234);
    }

    #[test]
    fn a_bad_descriptor_is_an_error() {
        assert!(keepalive(-1).is_err());
    }
}
