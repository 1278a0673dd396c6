//! A client of the control socket, for the CLI and the login agent.

use crate::protocol::{
    read_frame, write_frame, DeviceInfo, ErrorKind, EventKind, FrameError, Request, Response,
    VERSION,
};
use std::io::BufReader;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use thiserror::Error;
use tr::tr;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot reach the guilocker daemon at {path}: {source} (is it running?)")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("talking to the daemon: {0}")]
    Frame(#[from] FrameError),
    #[error("the daemon closed the connection")]
    Closed,
    #[error("{message}")]
    Daemon { kind: ErrorKind, message: String },
    #[error("the daemon sent an unexpected reply: {0}")]
    Unexpected(String),
}

impl ClientError {
    /// What a person reads of this error, in their language: the daemon's own sentences as
    /// far as [`crate::i18n::localize`] knows them. (`Display` stays English, for logs.)
    pub fn localized(&self) -> String {
        match self {
            Self::Connect { path, source } => tr!(
                "cannot reach the guilocker daemon at {path}: {cause} (is it running?)",
                path = path.display(),
                cause = source
            ),
            Self::Frame(e) => tr!("talking to the daemon: {cause}", cause = e),
            Self::Closed => tr!("the daemon closed the connection"),
            Self::Daemon { message, .. } => crate::i18n::localize(message),
            Self::Unexpected(reply) => tr!("the daemon sent an unexpected reply: {reply}", reply),
        }
    }
}

pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connects and checks the protocol version.
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.into(),
            source,
        })?;
        let writer = stream.try_clone().map_err(|source| ClientError::Connect {
            path: path.into(),
            source,
        })?;
        let mut client = Self {
            reader: BufReader::new(stream),
            writer,
        };
        match client.request(&Request::Hello { version: VERSION })? {
            Response::Hello { .. } => Ok(client),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Sends one request; an `error` reply becomes [`ClientError::Daemon`].
    pub fn request(&mut self, request: &Request) -> Result<Response, ClientError> {
        write_frame(&mut self.writer, request)?;
        match read_frame(&mut self.reader)? {
            None => Err(ClientError::Closed),
            Some(Response::Error { kind, message }) => Err(ClientError::Daemon { kind, message }),
            Some(response) => Ok(response),
        }
    }

    pub fn status(&mut self) -> Result<Vec<DeviceInfo>, ClientError> {
        self.status_counted().map(|(devices, _)| devices)
    }

    /// The devices, and how many the daemon left out to fit its reply in one frame.
    pub fn status_counted(&mut self) -> Result<(Vec<DeviceInfo>, usize), ClientError> {
        match self.request(&Request::Status)? {
            Response::Status { devices, omitted } => Ok((devices, omitted)),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Turns the connection into an event stream.
    pub fn subscribe(mut self) -> Result<Events, ClientError> {
        match self.request(&Request::Subscribe)? {
            Response::Subscribed => Ok(Events {
                reader: self.reader,
            }),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }
}

/// Events from a subscribed connection; ends when the daemon goes away.
pub struct Events {
    reader: BufReader<UnixStream>,
}

impl Events {
    pub fn stream(&self) -> &UnixStream {
        self.reader.get_ref()
    }

    /// True if a complete event may already be buffered (poll the stream only when not).
    pub fn has_buffered(&self) -> bool {
        !self.reader.buffer().is_empty()
    }
}

impl Iterator for Events {
    type Item = Result<(EventKind, DeviceInfo), ClientError>;

    fn next(&mut self) -> Option<Self::Item> {
        match read_frame(&mut self.reader) {
            Ok(None) => None,
            Ok(Some(Response::Event { event, device, .. })) => Some(Ok((event, device))),
            Ok(Some(other)) => Some(Err(ClientError::Unexpected(format!("{other:?}")))),
            Err(e) => Some(Err(e.into())),
        }
    }
}
