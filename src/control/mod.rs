//! The launcher's control API: HTTP/1.1 + JSON over `<state-dir>/control.sock`.
//! Request/response types, the one `Action` enum requests parse into, server routes and
//! the typed client used by the handler and vmpodctl. Owns no VM or network state itself.
