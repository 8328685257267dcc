//! The gatekeeper daemon's side of the ban socket, for tests: a Unix-socket listener that
//! reads one JSON request a line, answers one line (ok, or refused), and records what it was
//! asked.

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How the fake daemon answers.
#[derive(Clone)]
pub enum Answer {
    Ok,
    Refuse(&'static str),
}

/// The daemon's side of the ban socket.
pub struct BanSocket {
    pub path: PathBuf,
    requests: Arc<Mutex<Vec<Value>>>,
    pub connections: Arc<AtomicUsize>,
    streams: Arc<Mutex<Vec<UnixStream>>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

fn answer_line(request: &Value, answer: &Answer) -> String {
    match answer {
        Answer::Ok => format!(
            "{{\"ok\": true, \"banned\": \"{}/32\", \"for_secs\": {}}}\n",
            request["ban"].as_str().unwrap_or("?"),
            request["for_secs"]
        ),
        Answer::Refuse(why) => format!("{{\"ok\": false, \"error\": \"{why}\"}}\n"),
    }
}

impl BanSocket {
    pub fn start(path: &Path, answer: Answer) -> BanSocket {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).expect("bind the ban socket");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let streams = Arc::new(Mutex::new(Vec::<UnixStream>::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (requests, connections, streams, stop) = (
                requests.clone(),
                connections.clone(),
                streams.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    connections.fetch_add(1, Ordering::SeqCst);
                    streams
                        .lock()
                        .expect("streams")
                        .push(stream.try_clone().expect("clone"));
                    let (requests, answer) = (requests.clone(), answer.clone());
                    std::thread::spawn(move || {
                        let mut writer = stream.try_clone().expect("clone");
                        for line in BufReader::new(stream).lines() {
                            let Ok(line) = line else { break };
                            let request: Value = serde_json::from_str(&line)
                                .unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}"));
                            let reply = answer_line(&request, &answer);
                            requests.lock().expect("requests").push(request);
                            if writer.write_all(reply.as_bytes()).is_err() {
                                break;
                            }
                        }
                    });
                }
            })
        };
        BanSocket {
            path: path.to_owned(),
            requests,
            connections,
            streams,
            stop,
            acceptor: Some(acceptor),
        }
    }

    pub fn requests(&self) -> Vec<Value> {
        self.requests.lock().expect("requests").clone()
    }

    /// Waits until `n` requests came (or fails), then a little longer to catch extra ones.
    pub fn wait_for(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.requests().len() < n {
            assert!(
                Instant::now() < deadline,
                "{} ban request(s), expected {n}: {:?}",
                self.requests().len(),
                self.requests()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300));
        self.requests()
    }
}

impl Drop for BanSocket {
    /// Like a daemon that stops: the listener and every connection go away.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
        for s in self.streams.lock().expect("streams").drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        let _ = std::fs::remove_file(&self.path);
    }
}
