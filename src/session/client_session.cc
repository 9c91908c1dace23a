#include "session/client_session.h"

#include <fmt/format.h>
#include <poll.h>
#include <pwd.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "common/log.h"
#include "diagnostics/lease_watch.h"
#include "protocol/sqlstate.h"
#include "protocol/tracked_params.h"
#include "protocol/wire.h"
#include "session/cancel_forwarder.h"

namespace sluice::session {

using protocol::ErrorInfo;
using stats::CloseReason;
using ServerState = pool::ServerConn::State;

namespace {
constexpr size_t kReadChunk = size_t{16} * 1024;
constexpr size_t kHighWatermark = size_t{512} * 1024;  // client write buffer that pauses the server
constexpr size_t kLowWatermark = size_t{64} * 1024;
// Query and Parse texts are inspected for session state up to this size (a longer one only on
// its first 64 KiB, as the prepared-statement rewriter reads them).
constexpr size_t kMaxInspectedSql = size_t{64} * 1024;
// How long a client closed after an error may keep sending before its socket is closed anyway.
constexpr std::chrono::milliseconds kLingerLimit{1000};

ErrorInfo makeError(const char* sqlstate, std::string message, const char* severity = "ERROR") {
  ErrorInfo e;
  e.severity = severity;
  e.sqlstate = sqlstate;
  e.message = std::move(message);
  return e;
}

double secs(Millis m) { return m.count() / 1000.0; }
}  // namespace

ClientSession::ClientSession(SessionContext* ctx, net::EventLoop* loop, int fd, std::string peer)
    : ctx_(ctx),
      loop_(loop),
      id_(ctx->next_client_id.fetch_add(1)),
      peer_(std::move(peer)),
      connected_at_(now()),
      last_activity_(connected_at_),
      fd_(fd) {}

ClientSession::~ClientSession() {
  if (fd_ >= 0) ::close(fd_);  // only when its loop ended before the session did
}

const config::Settings& ClientSession::settings() const {
  return ctx_->loops[loop_->index()]->cfg->settings;
}

const std::string& ClientSession::lastStatement() const {
  static const std::string kNone;
  return last_statement_ ? *last_statement_ : kNone;
}

const std::string& ClientSession::applicationName() const {
  return want_[protocol::kApplicationNameParam];
}

std::string ClientSession::prefix() const {
  return fmt::format("[C{} {}/{}@{}]", id_, database_, user_, peer_);
}

void ClientSession::start() {
  ctx_->loops[loop_->index()]->clients.insert(this);
  ctx_->client_count.fetch_add(1);
  slot_ = loop_->add(fd_, this, shared_from_this());
  // Counted from accept to the end of authentication, across all loops: silent or slow
  // clients cannot hold more than max_pending_logins connections at once.
  pending_login_ = true;
  int pending = ctx_->pending_logins.fetch_add(1, std::memory_order_relaxed) + 1;
  int max = settings().max_pending_logins;
  if (max > 0 && pending > max) {
    closeWithError(CloseReason::kMaxPendingLogins,
                   fmt::format("sluice: too many connections are logging in: max_pending_logins "
                               "({}) reached; retry later, raise max_pending_logins, or lower "
                               "client_login_timeout so that silent connections close sooner",
                               max));
    return;
  }
  startRead();
}

void ClientSession::endPendingLogin() {
  if (!pending_login_) return;
  pending_login_ = false;
  ctx_->pending_logins.fetch_sub(1, std::memory_order_relaxed);
}

// ---- I/O ----

// An idle client holds no buffer: it waits for readability, then borrows one from its loop's
// pool for as long as it has unprocessed bytes.
void ClientSession::startRead() {
  if (read_in_flight_ || state_ == State::kClosed || close_after_write_) return;
  read_in_flight_ = true;
  loop_->wantRead(slot_);
}

void ClientSession::waitFor(uint64_t wait_id) {
  wait_id_ = wait_id;
  if (wait_id == 0 || watching_hangup_ || read_in_flight_) return;
  // Queued, the client's next bytes stay in the kernel; but a client that gives up and closes
  // must leave the queue now, not get a server later for a query nobody waits for.
  watching_hangup_ = true;
  read_in_flight_ = true;
  loop_->wantRead(slot_);
}

void ClientSession::stopHangupWatch() {
  if (!watching_hangup_) return;
  watching_hangup_ = false;
  if (state_ == State::kClosed || slot_ == nullptr) return;  // closed meanwhile
  read_in_flight_ = false;
  net::EventLoop::mayBeReadable(slot_);  // the watch left unread bytes in the kernel
}

void ClientSession::onReadable() {
  read_in_flight_ = false;
  if (lingering_) {
    lingerRead();
    return;
  }
  if (state_ == State::kClosed || close_after_write_) return;
  if (watching_hangup_) {
    if (state_ == State::kWaiting || state_ == State::kWelcome) {
      pollfd pfd{fd_, POLLRDHUP, 0};
      if (::poll(&pfd, 1, 0) > 0 && (pfd.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0) {
        closeQuietly(CloseReason::kClientEof, "gave up while waiting for a server");
        return;
      }
      // Bytes, not a hang-up: leave them for after the wait and sleep until the next edge.
      net::EventLoop::drained(slot_);
      read_in_flight_ = true;
      loop_->wantRead(slot_);
      return;
    }
    stopHangupWatch();
  }
  char* p;
  if (in_.capacity() == 0) {
    in_.adopt(loopState().buffers.take(), net::BufferPool::kSize);
    p = in_.prepare(1);
  } else {
    p = in_.prepare(kReadChunk);
  }
  size_t room = in_.writable();
  if (tls_) {
    ssize_t n = recvTls(p, room);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
      releaseBufferIfDrained();
      startRead();
      return;
    }
    if (n < 0 && errno == EPROTO) {
      closeQuietly(CloseReason::kTlsFailed, tls_->error());
      return;
    }
    if (n < 0 && errno == ENOPROTOOPT) {
      closeQuietly(CloseReason::kTlsFailed, "direct TLS connection without ALPN \"postgresql\"");
      return;
    }
    onRead(n, n < 0 ? errno : 0);
    return;
  }
  ssize_t n = net::sysRecv(fd_, p, room, MSG_DONTWAIT);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
    if (errno != EINTR) net::EventLoop::drained(slot_);
    releaseBufferIfDrained();
    startRead();
    return;
  }
  if (n > 0 && size_t(n) < room) net::EventLoop::drained(slot_);  // a short read empties it
  onRead(n, n < 0 ? errno : 0);
}

void ClientSession::startTls(std::shared_ptr<const net::TlsContext> tls) {
  tls_ = std::make_unique<net::TlsStream>(std::move(tls));
}

// Plaintext from the TLS stream; the handshake and any alert it answers go out raw.
ssize_t ClientSession::recvTls(char* p, size_t room) {
  bool drained = false;
  ssize_t n = tls_->read(fd_, p, room, &drained);
  int err = errno;
  thread_local std::string out;
  out.clear();
  tls_->takeOutput(&out);
  if (!out.empty()) sendRaw(out);
  if (n > 0 && tls_->buffered()) {
    net::EventLoop::mayBeReadable(slot_);
  } else if (drained) {
    net::EventLoop::drained(slot_);
  }
  if (n > 0 && direct_tls_ && tls_->alpn() != "postgresql") {
    // PostgreSQL 17 refuses direct TLS without ALPN: a client that did not ask for the
    // postgresql protocol may be something else talking to the wrong port.
    errno = ENOPROTOOPT;
    return -1;
  }
  errno = err;
  return n;
}

std::string ClientSession::tlsDescription() const {
  if (!tls_ || !tls_->handshakeDone()) return {};
  return tls_->version() + "/" + tls_->cipher();
}

void ClientSession::releaseBufferIfDrained() {
  if (in_.empty() && !read_in_flight_ && in_.capacity() == net::BufferPool::kSize) {
    loopState().buffers.give(in_.release());
  } else if (in_.empty() && !read_in_flight_) {
    in_.shrinkIfEmpty();
  }
}

LoopClients& ClientSession::loopState() const { return *ctx_->loops[loop_->index()]; }

// n > 0: bytes read; 0: the client closed; < 0: `err` says why.
void ClientSession::onRead(ssize_t n, int err) {
  if (state_ == State::kClosed) return;
  if (close_after_write_) return;  // an error is on its way out; nothing more is read
  if (n == 0) {
    closeQuietly(CloseReason::kClientEof);
    return;
  }
  if (n < 0) {
    closeQuietly(CloseReason::kClientIoError, std::string("read: ") + std::strerror(err));
    return;
  }
  in_.commit(size_t(n));
  last_activity_ = now();
  switch (state_) {
    case State::kStartup:
      processStartup();
      break;
    case State::kAuth:
      processAuth();
      break;
    case State::kIdle:
    case State::kActive:
      if (is_admin_) {
        processAdmin();
      } else {
        processClient();
      }
      break;
    case State::kWelcome:
    case State::kWaiting:
    case State::kSyncing:
      break;  // data stays buffered until a server is ready
    case State::kClosed:
      return;
  }
}

// Writes go straight to the socket (net::Outbox); only what the kernel does not take waits for
// writability. Nothing here closes the session synchronously: send() runs inside other
// components' event handlers (a server's read), so a failure is reported from a fresh handler.
void ClientSession::send(std::string_view bytes) {
  if (state_ == State::kClosed) return;
  if (tls_) {
    thread_local std::string cipher;
    cipher.clear();
    if (!tls_->write(bytes, &cipher)) {
      close_after_write_ = true;  // nothing more can be said to this client
      auto self = shared_from_this();
      loop_->post([self] { self->closeQuietly(CloseReason::kTlsFailed, self->tls_->error()); });
      return;
    }
    sendRaw(cipher);
    return;
  }
  sendRaw(bytes);
}

void ClientSession::sendRaw(std::string_view bytes) {
  if (state_ == State::kClosed) return;
  if (write_in_flight_) {
    outbox_.queue(bytes);
    return;
  }
  afterWrite(outbox_.write(fd_, bytes));
}

void ClientSession::flushWrites() {
  if (write_in_flight_ || state_ == State::kClosed) return;
  afterWrite(outbox_.flush(fd_));
}

void ClientSession::afterWrite(net::Outbox::Result r) {
  switch (r) {
    case net::Outbox::Result::kDone:
      if (close_after_write_) {
        auto self = shared_from_this();
        loop_->post([self] { self->closeQuietly(self->close_reason_); });
      }
      return;
    case net::Outbox::Result::kBlocked:
      write_in_flight_ = true;
      net::EventLoop::full(slot_);
      loop_->wantWrite(slot_);
      return;
    case net::Outbox::Result::kError: {
      write_in_flight_ = true;  // nothing more is written
      auto self = shared_from_this();
      loop_->post([self] { self->onWritable(); });  // flush() reports the error again there
      return;
    }
  }
}

void ClientSession::onWritable() {
  write_in_flight_ = false;
  if (state_ == State::kClosed) return;
  net::Outbox::Result r = outbox_.flush(fd_);
  switch (r) {
    case net::Outbox::Result::kDone:
      if (close_after_write_) {
        closeQuietly(close_reason_);
        return;
      }
      break;
    case net::Outbox::Result::kBlocked:
      afterWrite(r);
      break;
    case net::Outbox::Result::kError:
      closeQuietly(CloseReason::kClientIoError,
                   std::string("write: ") + std::strerror(outbox_.error()));
      return;
  }
  if (server_ && outbox_.pending() < kLowWatermark) server_->resumeReading();
}

bool ClientSession::wantsMore() const { return outbox_.pending() < kHighWatermark; }

void ClientSession::closeWithError(CloseReason reason, std::string message) {
  ErrorInfo e;
  e.severity = "FATAL";
  e.sqlstate = stats::closeReasonSqlstate(reason);
  e.message = std::move(message);
  closeWithError(e, reason);
}

void ClientSession::closeWithError(const ErrorInfo& e, CloseReason reason) {
  if (closing()) return;
  std::string msg;
  protocol::appendError(msg, e);
  send(msg);
  if (stats_) stats_->sluice_errors.add(e.sqlstate);
  close_reason_ = reason;
  close_detail_ = std::make_unique<std::string>(e.message);
  close_after_write_ = true;
  if (wait_id_ && pool_) {
    pool_->cancelWait(wait_id_);
    wait_id_ = 0;
  }
  if (server_ && !resetPinnedServer()) {
    dropServer(std::string("client closed: ") + stats::closeReasonToken(reason));
  }
  flushWrites();  // closeQuietly() follows once the error is written
}

void ClientSession::closeQuietly(CloseReason reason, const std::string& detail) {
  if (state_ == State::kClosed) return;
  if (close_after_write_) {
    reason = close_reason_;  // the error already sent names the real reason
  } else {
    close_reason_ = reason;
  }
  State was = state_;
  endPendingLogin();
  if (lookup_) {
    lookup_->cancel();
    lookup_.reset();
  }
  if (wait_id_ && pool_) {
    pool_->cancelWait(wait_id_);
    wait_id_ = 0;
  }
  if (server_ && reading_search_path_) {
    // Its last transaction may have changed search_path and sluice is reading it back: the
    // callback gives the server back once the answer came (a client that quits right after
    // SET search_path or DISCARD ALL does not cost a server connection).
    reading_search_path_ = false;
    search_path_dirty_ = false;
    rewriter_.reset();
    held_total_s_ += secondsSince(server_since_);
    server_->detach();
    server_.reset();
  }
  if (server_ && !resetPinnedServer() && pinned_ != protocol::SessionState::kNone &&
      mode_ != config::PoolMode::kSession) {
    // In a transaction or a query: no reset can run now, and its session state (a lock,
    // LISTEN, a temporary table, ...) must not reach another client.
    dropServer(std::string("client disconnected while pinned, in a transaction or query: ") +
               protocol::sessionStateWhat(pinned_) + " may still be held");
  }
  if (pinned_ != protocol::SessionState::kNone && stats_) {
    stats_->pins_ended.add();
    pool_->unpin();
  }
  if (server_) {
    if (serverClean() && server_->pendingCancels == 0 && was == State::kActive) {
      if (mode_ == config::PoolMode::kSession) {
        // Session mode: reset the server's session state before another client gets it. Its
        // search_path was not followed: the reset decides what sluice knows of it.
        server_->setTracked(protocol::kSearchPathSlot, protocol::kSearchPathUnknown);
        pool_->resetAndRelease(std::move(server_));
      } else {
        releaseServer();
      }
    } else {
      dropServer("client disconnected with a transaction or query in progress");
    }
  }
  state_ = State::kClosed;
  auto& counters =
      pool_ ? pool_->shard(loop_->index()).disconnects : ctx_->loops[loop_->index()]->disconnects;
  counters[static_cast<int>(reason)].add();
  if (pool_ && joined_pool_) {
    pool_->clientLeft();
    // Its hold time stays counted for its application_name (bounded: the rest as "(other)").
    auto& closed = loopState().closed_app_hold_s;
    auto it = closed.find(applicationName());
    if (it == closed.end() && closed.size() >= 1000) it = closed.try_emplace("(other)").first;
    if (it == closed.end()) it = closed.try_emplace(applicationName()).first;
    it->second += held_total_s_;
  }
  if (cancel_pid_) ctx_->cancels.remove(cancel_pid_, cancel_key_);
  ctx_->loops[loop_->index()]->clients.erase(this);
  ctx_->client_count.fetch_sub(1);
  // After closeWithError() the detail is the error it sent.
  const std::string& detail_text = close_after_write_ && close_detail_ ? *close_detail_ : detail;
  if (reason != CloseReason::kCancelRequest && settings().log_disconnections) {
    SLOG_INFO("{} closing: {}{}{} (age {:.0f} s, {} transactions)", prefix(),
              stats::closeReasonToken(reason), detail_text.empty() ? "" : ": ", detail_text,
              secondsSince(connected_at_), transactions_);
  }
  if (close_after_write_ && slot_ != nullptr && fd_ >= 0) {
    linger();
    return;
  }
  net::EventLoop::TimerId no_timer = 0;
  loop_->release(no_timer, slot_, fd_);
}

void ClientSession::linger() {
  lingering_ = true;
  ::shutdown(fd_, SHUT_WR);
  auto self = shared_from_this();
  loop_->runAfter(kLingerLimit, [self] { self->endLinger(); });
  lingerRead();
}

void ClientSession::lingerRead() {
  char sink[4096];
  for (;;) {
    ssize_t n = net::sysRecv(fd_, sink, sizeof sink, MSG_DONTWAIT);
    if (n > 0) continue;  // what the client sent before it saw the error: nobody reads it now
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      net::EventLoop::drained(slot_);
      read_in_flight_ = true;
      loop_->wantRead(slot_);
      return;
    }
    endLinger();  // EOF: the client closed too (or an error)
    return;
  }
}

void ClientSession::endLinger() {
  if (!lingering_) return;
  lingering_ = false;
  net::EventLoop::TimerId no_timer = 0;
  loop_->release(no_timer, slot_, fd_);
}

// ---- startup and authentication ----

void ClientSession::processStartup() {
  while (state_ == State::kStartup) {
    if (!tls_ && !in_.empty() && uint8_t(in_.data()[0]) == 0x16) {
      // A TLS handshake record where a startup packet's length would begin (never 0x16 for a
      // packet of at most kMaxStartupPacket bytes): PostgreSQL 17's direct TLS.
      auto tls = ctx_->pools->clientTls();
      if (!tls) {
        closeQuietly(CloseReason::kTlsFailed,
                     "direct TLS connection while client_tls_sslmode is disable");
        return;
      }
      startTls(std::move(tls));
      direct_tls_ = true;
      tls_->feed(in_.data());
      in_.consume(in_.size());
      net::EventLoop::mayBeReadable(slot_);  // the ClientHello waits inside the stream
      break;
    }
    if (in_.size() < 4) break;
    uint32_t len = protocol::readU32(in_.data().data());
    if (len < 8 || len > protocol::kMaxStartupPacket) {
      closeWithError(CloseReason::kBadStartup,
                     fmt::format("sluice: invalid startup packet length {} (at most {})", len,
                                 protocol::kMaxStartupPacket));
      return;
    }
    if (in_.size() < len) break;
    auto pkt = protocol::parseStartupPacket(in_.data().substr(0, len));
    in_.consume(len);
    if (std::holds_alternative<protocol::SslRequest>(pkt)) {
      auto tls = tls_ ? nullptr : ctx_->pools->clientTls();
      if (!tls) {
        send("N");  // client_tls_sslmode = disable (or a second request inside TLS)
        continue;
      }
      if (!in_.empty()) {
        // Bytes sent before the handshake could be injected by a man in the middle
        // (CVE-2021-23214): PostgreSQL refuses them too.
        closeWithError(CloseReason::kProtocolViolation,
                       "sluice: received unencrypted data after the TLS request");
        return;
      }
      sendRaw("S");
      startTls(std::move(tls));
      continue;
    }
    if (std::holds_alternative<protocol::GssEncRequest>(pkt)) {
      send("N");  // GSS encryption is not offered
      continue;
    }
    if (auto* c = std::get_if<protocol::CancelRequest>(&pkt)) {
      if (auto target = ctx_->cancels.find(c->pid, c->key)) {
        target->clientLoop()->post([target] { target->onCancelRequest(); });
      }
      closeQuietly(CloseReason::kCancelRequest);
      return;
    }
    if (auto* e = std::get_if<protocol::StartupError>(&pkt)) {
      closeWithError(CloseReason::kBadStartup, "sluice: " + e->message);
      return;
    }
    handleStartupMessage(std::get<protocol::StartupMessage>(pkt));
  }
  if (state_ == State::kStartup) startRead();
  if (state_ == State::kAuth) processAuth();
}

bool ClientSession::handleStartupMessage(const protocol::StartupMessage& m) {
  auto cfg = ctx_->pools->config();
  const auto& s = cfg->settings;
  auto fatal = [&](CloseReason reason, std::string msg) {
    closeWithError(reason, std::move(msg));
    return false;
  };
  const std::string* user = m.find("user");
  if (!user || user->empty()) return fatal(CloseReason::kNoUser, "no user name given");
  user_ = *user;
  const std::string* db = m.find("database");
  database_ = db && !db->empty() ? *db : user_;

  if (ctx_->client_count.load() > s.max_client_conn) {
    return fatal(CloseReason::kMaxClientConn,
                 fmt::format("sluice: no more connections allowed: max_client_conn ({}) reached; "
                             "raise max_client_conn or use fewer client connections",
                             s.max_client_conn));
  }
  if (ctx_->refuse_logins.load()) {
    return fatal(CloseReason::kShuttingDown, "sluice is shutting down");
  }
  for (const auto& [k, v] : m.params) {
    if (k == "user" || k == "database") continue;
    if (auto i = protocol::trackedIndex(k)) {
      want_.set(*i, v);
      want_given_[*i] = true;
      continue;
    }
    std::string lk = k;
    std::transform(lk.begin(), lk.end(), lk.begin(), ::tolower);
    if (lk == "replication" && (v == "false" || v == "0" || v == "off" || v == "no")) continue;
    if (lk == "search_path") {
      // pgJDBC's currentSchema: PostgreSQL reads a startup value as set_config() would.
      want_.set(protocol::kSearchPathSlot, protocol::searchPathValue(v));
      want_given_[protocol::kSearchPathSlot] = true;
      continue;
    }
    // Since PostgreSQL 12 any extra_float_digits above 0 means the same shortest-exact output
    // the server default (1) gives, so JDBC's extra_float_digits=3 is safe to drop.
    if (lk == "extra_float_digits") continue;
    if (std::find(s.ignore_startup_parameters.begin(), s.ignore_startup_parameters.end(), lk) !=
        s.ignore_startup_parameters.end()) {
      continue;
    }
    return fatal(CloseReason::kUnsupportedParameter,
                 // The value is not echoed: it goes to the log too, and may be anything
                 // (options=-c password=... has been seen).
                 fmt::format("sluice: unsupported startup parameter: {} (add it to "
                             "ignore_startup_parameters to let clients send it)",
                             k));
  }

  if (s.application_name_add_host) {
    // PgBouncer's format: "app - 10.0.0.5(51234)".
    auto colon = peer_.rfind(':');
    std::string host = colon == std::string::npos
                           ? peer_
                           : peer_.substr(0, colon) + "(" + peer_.substr(colon + 1) + ")";
    want_given_[protocol::kApplicationNameParam] = true;
    const std::string& app = want_[protocol::kApplicationNameParam];
    want_.set(protocol::kApplicationNameParam, app.empty() ? host : app + " - " + host);
  }
  if (!tls_ && s.client_tls_sslmode >= config::SslMode::kRequire && peer_ != "unix") {
    return fatal(CloseReason::kNotAllowed,
                 fmt::format("sluice: TLS is required (client_tls_sslmode = {}); connect with "
                             "sslmode=require or stricter",
                             config::sslModeName(s.client_tls_sslmode)));
  }
  is_admin_ = database_ == "pgbouncer" || database_ == "sluice";
  log_connections_ = s.log_connections;
  const std::string* secret = nullptr;
  auto users = ctx_->pools->userList();
  if (users) secret = users->find(user_);
  config::AuthType type = s.auth_type;
  if (type == config::AuthType::kHba) {
    auto t = hbaAuthType();
    if (!t) return false;
    type = *t;
  }
  if (type == config::AuthType::kCert) {
    // The client certificate, verified against client_tls_ca_file, must name the user (CN).
    if (!tls_ || !tls_->peerVerified()) {
      return fatal(CloseReason::kNotAllowed,
                   "sluice: certificate authentication failed for user \"" + user_ +
                       "\": connect with TLS and a client certificate signed by "
                       "client_tls_ca_file");
    }
    if (!protocol::constantTimeEquals(tls_->peerCommonName(), user_)) {
      return fatal(CloseReason::kNotAllowed,
                   "sluice: certificate authentication failed for user \"" + user_ +
                       "\": the certificate's common name is \"" + tls_->peerCommonName() + "\"");
    }
    type = config::AuthType::kAny;  // no password: the certificate is the proof
  }
  if (is_admin_) {
    bool allowed =
        std::find(s.admin_users.begin(), s.admin_users.end(), user_) != s.admin_users.end() ||
        std::find(s.stats_users.begin(), s.stats_users.end(), user_) != s.stats_users.end();
    if (!allowed) {
      // As for a wrong password: the client learns nothing about who may use the console
      // (PgBouncer 1.18 says "not allowed" before any password, which tells that the user is
      // no admin); the log says why.
      admin_denied_ = true;
    }
  } else {
    std::string err;
    pool_ = ctx_->pools->get(database_, user_, &err);
    if (!pool_) return fatal(CloseReason::kUnknownDatabase, err);
    if (pool_->disabled()) {
      return fatal(CloseReason::kDatabaseDisabled,
                   "sluice: database \"" + database_ +
                       "\" is disabled (DISABLE on the admin console): it accepts no new "
                       "connections until ENABLE");
    }
    stats_ = &pool_->shard(loop_->index());
    mode_ = pool_->settings().mode;
    // A password given in [databases] also authenticates clients of that user.
    if (!secret) {
      const auto* entry = cfg->findDatabase(database_);
      if (entry && !entry->password.empty() && (entry->user.empty() || entry->user == user_)) {
        secret = &entry->password;
      }
    }
  }
  if (!secret && !is_admin_ && type != config::AuthType::kAny) {
    const auto* entry = cfg->findDatabase(database_);
    const std::string& auth_user =
        entry && !entry->auth_user.empty() ? entry->auth_user : s.auth_user;
    if (!auth_user.empty()) {
      const std::string& auth_db = entry && !entry->auth_dbname.empty() ? entry->auth_dbname
                                   : !s.auth_dbname.empty()             ? s.auth_dbname
                                                                        : database_;
      startAuthLookup(type, auth_user, auth_db);
      return false;
    }
  }
  beginAuth(type, secret);
  return false;  // the rest of the buffer is handled by the next phase
}

void ClientSession::beginAuth(config::AuthType type, const std::string* secret) {
  if (type == config::AuthType::kTrust && !settings().auth_file.empty() && !secret) {
    // PgBouncer's rule: with trust, the user must still be listed in auth_file.
    closeWithError(CloseReason::kNotAllowed,
                   "sluice: \"trust\" authentication failed for user \"" + user_ +
                       "\": with auth_type = trust the user must still be listed in auth_file");
    return;
  }
  state_ = State::kAuth;
  auth_ = std::make_unique<auth::ClientAuth>(type, user_, secret);
  if (!secret) {
    // An unknown user's mock exchange looks like what known users get: SCRAM when auth_file
    // holds more SCRAM secrets than md5 ones, or when auth_query finds them (PostgreSQL's
    // default password_encryption is scram-sha-256).
    auto users = ctx_->pools->userList();
    bool scram = lookup_tried_ || (users && users->scram_secrets * 2 > int(users->secrets.size()));
    auth_->setUnknownUserScram(scram);
  }
  auto step = auth_->start();
  if (step.outcome == auth::ClientAuth::Outcome::kFailed) {
    closeWithError(step.error, CloseReason::kAuthFailed);
    return;
  }
  if (step.outcome == auth::ClientAuth::Outcome::kOk && admin_denied_) {
    refuseAdmin();
    return;
  }
  send(step.out);
  if (step.outcome == auth::ClientAuth::Outcome::kOk) finishLogin();
}

void ClientSession::refuseAdmin() {
  SLOG_INFO(
      "{} not allowed to use the admin console: \"{}\" is in neither admin_users nor "
      "stats_users (the client is told its password failed)",
      prefix(), user_);
  ErrorInfo e = makeError(sqlstate::kInvalidPassword,
                          "password authentication failed for user \"" + user_ + "\"", "FATAL");
  closeWithError(e, CloseReason::kNotAllowed);
}

void ClientSession::startAuthLookup(config::AuthType type, const std::string& auth_user,
                                    const std::string& auth_db) {
  std::string err;
  auto auth_pool = ctx_->pools->get(auth_db, auth_user, &err);
  if (!auth_pool) {
    closeWithError(CloseReason::kAuthQueryFailed, "sluice: auth_dbname: " + err);
    return;
  }
  state_ = State::kAuth;  // nothing is read until the lookup answers
  std::weak_ptr<ClientSession> weak = shared_from_this();
  lookup_ = std::make_shared<AuthLookup>(
      loop_, std::move(auth_pool), settings().auth_query, user_, settings().server_connect_timeout,
      [weak, type](AuthLookup::Outcome o) {
        auto self = weak.lock();
        if (!self || self->closing() || !self->lookup_) return;
        auto keep = std::move(self->lookup_);  // alive until this callback returns
        if (!o.ok) {
          self->closeWithError(o.error, o.reason);
          return;
        }
        self->looked_up_secret_ = std::move(o.secret);
        self->lookup_tried_ = true;
        if (self->ctx_->pools->config()->settings.verbose > 0) {
          SLOG_INFO("{} auth_query: user {}", self->prefix(),
                    self->looked_up_secret_ ? "found" : "not found");
        }
        self->beginAuth(type, self->looked_up_secret_ ? &*self->looked_up_secret_ : nullptr);
        if (self->state_ == State::kAuth) self->processAuth();
      });
  lookup_->start();
}

std::optional<config::AuthType> ClientSession::hbaAuthType() {
  auto rules = ctx_->hba();
  if (!rules) {
    closeWithError(CloseReason::kNotAllowed,
                   "sluice: auth_type = hba but auth_hba_file could not be loaded (see the log)");
    return std::nullopt;
  }
  auth::HbaConnection c;
  c.database = database_;
  c.user = user_;
  c.tls = tls_ != nullptr;
  c.cert_verified = tls_ && tls_->peerVerified();
  const std::string cert_cn = tls_ ? tls_->peerCommonName() : std::string();
  sockaddr_storage sa{};
  socklen_t len = sizeof(sa);
  if (::getpeername(fd_, reinterpret_cast<sockaddr*>(&sa), &len) == 0 && sa.ss_family == AF_UNIX) {
    c.local = true;
  } else if (!auth::hbaSetAddress(c, &sa, len)) {
    closeWithError(CloseReason::kNotAllowed, "sluice: cannot tell the client's address");
    return std::nullopt;
  }
  const auth::HbaRule* rule = auth::matchHba(*rules, c);
  std::string peer_user;
  if (rule && rule->method == auth::HbaMethod::kPeer && c.local) {
    // The OS user at the other end of the unix socket.
    ucred cred{};
    socklen_t cl = sizeof(cred);
    if (::getsockopt(fd_, SOL_SOCKET, SO_PEERCRED, &cred, &cl) == 0) {
      passwd pw{};
      passwd* found = nullptr;
      char buf[1024];
      if (::getpwuid_r(cred.uid, &pw, buf, sizeof(buf), &found) == 0 && found) {
        peer_user = found->pw_name;
      }
    }
  }
  auth::HbaVerdict v = auth::hbaVerdict(rule, c, cert_cn, peer_user);
  if (rule) {
    SLOG_DEBUG("{} {}:{} matched: {}", prefix(), rule->file, rule->line,
               auth::hbaMethodName(rule->method));
  }
  if (!v.type && rule && rule->method == auth::HbaMethod::kPeer) {
    SLOG_INFO("{} peer authentication: the socket's OS user is \"{}\"", prefix(), peer_user);
  }
  if (!v.type) {
    closeWithError(CloseReason::kNotAllowed, v.error);
    return std::nullopt;
  }
  return v.type;
}

void ClientSession::processAuth() {
  if (lookup_) return;  // the client speaks after sluice asks it for a password
  while (state_ == State::kAuth) {
    auto hdr = protocol::peekHeader(in_.data());
    if (!hdr) break;
    // A password, an md5 answer or a SCRAM message is a few hundred bytes at most.
    constexpr uint32_t kMaxPasswordMessage = 16 * 1024;
    if (hdr->type != 'p' || hdr->length < 4) {
      closeWithError(CloseReason::kProtocolViolation,
                     "sluice: expected a password message during authentication");
      return;
    }
    if (hdr->length > kMaxPasswordMessage) {
      closeWithError(CloseReason::kProtocolViolation,
                     fmt::format("sluice: password message of {} bytes is over the limit of {} "
                                 "bytes for authentication messages",
                                 hdr->length, kMaxPasswordMessage));
      return;
    }
    if (in_.size() < hdr->total()) break;
    std::string payload(in_.data().substr(5, hdr->length - 4));
    in_.consume(hdr->total());
    auto step = auth_->onPasswordMessage(payload);
    if (step.outcome == auth::ClientAuth::Outcome::kFailed) {
      closeWithError(step.error, CloseReason::kAuthFailed);
      return;
    }
    if (step.outcome == auth::ClientAuth::Outcome::kOk && admin_denied_) {
      refuseAdmin();
      return;
    }
    send(step.out);
    if (step.outcome == auth::ClientAuth::Outcome::kOk) {
      if (auto key = auth_->scramClientKey(); key && pool_) pool_->learnScramClientKey(*key);
      finishLogin();
      return;
    }
  }
  if (state_ == State::kAuth) startRead();
}

void ClientSession::finishLogin() {
  auth_.reset();
  endPendingLogin();
  if (looked_up_secret_ && pool_) pool_->learnSecret(*looked_up_secret_);
  auto [pid, key] = ctx_->cancels.add(shared_from_this());
  cancel_pid_ = pid;
  cancel_key_ = key;
  if (is_admin_) {
    std::string out;
    for (auto [k, v] : std::initializer_list<std::pair<const char*, const char*>>{
             {"server_version", "15.0 (sluice " SLUICE_VERSION ")"},
             {"client_encoding", "UTF8"},
             {"server_encoding", "UTF8"},
             {"DateStyle", "ISO, MDY"},
             {"TimeZone", "UTC"},
             {"standard_conforming_strings", "on"},
             {"integer_datetimes", "on"}}) {
      protocol::appendParameterStatus(out, k, v);
    }
    protocol::appendBackendKeyData(out, cancel_pid_, cancel_key_);
    protocol::appendReadyForQuery(out, 'I');
    send(out);
    state_ = State::kIdle;
    processAdmin();
    startRead();
    return;
  }
  pool_->clientJoined();
  joined_pool_ = true;
  stats_->client_logins.add();
  if (pool_->hasWelcome()) {
    sendWelcome();
    return;
  }
  // First client of a pool: a server login tells us what PostgreSQL reports at startup.
  state_ = State::kWelcome;
  wait_started_ = now();
  auto r =
      pool_->acquire(shared_from_this(), applicationName().empty() ? user_ : applicationName());
  if (r.server) {
    onServerAssigned(std::move(r.server));
  } else {
    waitFor(r.wait_id);
  }
}

void ClientSession::sendWelcome() {
  // Tracked parameters the client did not set start at the server's value; a client that set
  // none shares its pool's set.
  protocol::TrackedSet mine = pool_->welcomeTracked();
  bool changed = false;
  for (size_t i = 0; i < mine.size(); ++i) {
    if (want_given_[i]) changed |= mine.set(i, want_[i]);
  }
  want_ = changed ? pool_->internTracked(mine) : std::move(mine);
  std::string out;
  for (auto& [k, v] : pool_->welcome()) {
    auto i = protocol::trackedIndex(k);
    protocol::appendParameterStatus(out, k, i ? want_[*i] : v);
  }
  // Clients can tell they talk to sluice, and in which mode (as PgBouncer's own parameters).
  protocol::appendParameterStatus(out, "sluice_version", SLUICE_VERSION);
  protocol::appendParameterStatus(out, "sluice_pool_mode", config::poolModeName(mode_));
  protocol::appendBackendKeyData(out, cancel_pid_, cancel_key_);
  protocol::appendReadyForQuery(out, 'I');
  send(out);
  state_ = State::kIdle;
  if (log_connections_) {
    if (tls_) {
      SLOG_INFO("{} login ok ({})", prefix(), tlsDescription());
    } else {
      SLOG_INFO("{} login ok", prefix());
    }
  }
  processClient();
}

// ---- the relay ----

void ClientSession::processClient() {
  std::string_view data = in_.data();
  size_t pos = 0;
  size_t fwd_start = 0;
  auto forward = [&](size_t end) {
    if (end > fwd_start) {
      server_->send(data.substr(fwd_start, end - fwd_start));
      stats_->bytes_received.add(end - fwd_start);
    }
    fwd_start = end;
  };
  const int64_t max_packet = settings().max_packet_size;
  while (pos < data.size() && (state_ == State::kIdle || state_ == State::kActive)) {
    if (discard_left_ > 0) {
      size_t n = std::min(discard_left_, data.size() - pos);
      pos += n;
      discard_left_ -= n;
      fwd_start = pos;
      continue;
    }
    if (passthrough_left_ > 0) {
      size_t n = std::min(passthrough_left_, data.size() - pos);
      pos += n;
      passthrough_left_ -= n;
      continue;
    }
    auto hdr = protocol::peekHeader(data.substr(pos));
    if (!hdr) break;
    if (hdr->length < 4 || int64_t(hdr->length) > max_packet) {
      if (server_) forward(pos);
      closeWithError(
          CloseReason::kProtocolViolation,
          fmt::format(
              "sluice: invalid message length {} for message type '{}' (max_packet_size is {})",
              hdr->length, hdr->type, max_packet));
      return;
    }
    char t = hdr->type;
    if (t == 'X') {
      if (server_) forward(pos);
      in_.consume(pos + std::min(hdr->total(), data.size() - pos));
      closeQuietly(CloseReason::kClientTerminate);
      return;
    }
    if (!server_) {
      // A new request: borrow a server first; the bytes wait in the buffer.
      in_.consume(pos);
      if (!needServer()) return;
      data = in_.data();
      pos = fwd_start = 0;
      continue;
    }
    bool request = false;
    switch (t) {
      case 'Q':
      case 'F':
      case 'S':
        request = true;
        break;
      case 'P':
      case 'B':
      case 'D':
      case 'E':
      case 'C':
      case 'H':
      case 'd':
      case 'c':
      case 'f':
        break;
      default:
        forward(pos);
        closeWithError(CloseReason::kProtocolViolation,
                       fmt::format("sluice: unknown message type '{}'", t));
        return;
    }
    // A Parse refused under session_state = refuse: the rewriter answers it (below).
    protocol::SessionState refuse_parse = protocol::SessionState::kNone;
    if (t == 'Q' || t == 'P') {
      // What SHOW HOLDERS and the leak warning show; capacity stays, so no allocation.
      if (!last_statement_) last_statement_ = std::make_unique<std::string>();
      last_statement_->assign(diagnostics::statementText(
          data.substr(pos, std::min(hdr->total(), data.size() - pos)), kStatementShown));
      if (mode_ != config::PoolMode::kSession && pinned_ == protocol::SessionState::kNone) {
        // Session state transaction pooling cannot carry (LISTEN, a session advisory lock, a
        // temporary table, ...): the client keeps this server, or its Query is refused.
        size_t need = std::min(hdr->total(), kMaxInspectedSql);
        if (data.size() - pos < need) break;  // wait for the rest of it
        std::string_view sql =
            t == 'Q' ? data.substr(pos + protocol::kHeaderSize, need - protocol::kHeaderSize)
                     : diagnostics::statementText(data.substr(pos, need), need);
        if (t == 'Q' && !sql.empty() && sql.back() == '\0') sql.remove_suffix(1);
        auto effects = protocol::inspectSessionEffects(sql);
        if (effects.state != protocol::SessionState::kNone) {
          // A Parse can be refused only through the rewriter (max_prepared_statements > 0);
          // without it, it is pinned (see docs/architecture.md).
          if (settings().session_state == config::SessionStatePolicy::kRefuse &&
              (t == 'Q' || rewrite_enabled_)) {
            if (t == 'P') {
              refuse_parse = effects.state;
            } else {
              forward(pos);
              refuseSessionState(effects.state);
              size_t have = std::min(hdr->total(), data.size() - pos);
              discard_left_ = hdr->total() - have;
              pos += have;
              fwd_start = pos;
              continue;
            }
          } else {
            if (t == 'Q' && !pool_->tryPin()) {
              // Pinned clients already hold their share of the pool: one more would take a
              // server from the transactional clients for its whole session (LISTEN starvation).
              forward(pos);
              refuseWith(fmt::format("sluice: {} would pin this client to a server of pool {} for "
                                     "the rest of its session, and {} clients already are "
                                     "(max_pinned_servers = {}); the rest of the pool is kept "
                                     "for transactions. Use a session-mode pool (pool_mode = "
                                     "session on its own [databases] entry) for such clients, or "
                                     "raise max_pinned_servers",
                                     protocol::sessionStateWhat(effects.state), pool_->name(),
                                     pool_->pinnedServers(), pool_->maxPinnedServers()),
                         "too_many_connections");
              size_t have = std::min(hdr->total(), data.size() - pos);
              discard_left_ = hdr->total() - have;
              pos += have;
              fwd_start = pos;
              continue;
            }
            if (t != 'Q') pool_->forcePin();  // the state reaches the server with this Parse
            pin(effects.state);
          }
        }
        if (effects.search_path || (t == 'P' && search_path_statements_)) {
          noteSearchPathEffects(t, data.substr(pos, need), effects.search_path);
        }
      }
    } else if (t == 'B' && search_path_statements_ && !search_path_dirty_ &&
               pinned_ == protocol::SessionState::kNone) {
      // A Bind of a statement whose Parse may change search_path (perhaps parsed in an earlier
      // transaction): this transaction may change it too.
      size_t need = std::min(hdr->total(), kMaxInspectedSql);
      if (data.size() - pos < need) break;  // wait for the rest of its head
      noteSearchPathEffects(t, data.substr(pos, need), false);
    }
    if (!rewriter_ && rewrite_enabled_ && t != 'Q' && t != 'F' && t != 'd' && t != 'c' &&
        t != 'f') {
      // Prepared statements are virtualized, but only from the first message that can concern
      // one: a transaction of plain simple queries never pays for the rewriter. It must start
      // on a server that owes nothing, so earlier simple queries are answered first.
      if (server_->owedReady() > 0) {
        lazy_rewrite_waiting_ = true;  // offered again after the server's ReadyForQuery
        break;
      }
      startRewriter();
    }
    if (!rewriter_ && rewrite_enabled_ && t == 'Q' &&
        !(server_->statements().empty() && (!statements_ || statements_->size() == 0))) {
      // A simple query concerns prepared statements only as DEALLOCATE or DISCARD ALL, and only
      // when the client or the server has some.
      size_t need = protocol::Rewriter::clientBytesNeeded(t, hdr->length);
      if (data.size() - pos < need) break;  // wait for the rest of it
      if (protocol::mayDeallocate(
              data.substr(pos + protocol::kHeaderSize, need - protocol::kHeaderSize))) {
        if (server_->owedReady() > 0) {
          lazy_rewrite_waiting_ = true;
          break;
        }
        startRewriter();
      }
    }
    if (rewriter_) {
      // The rewriter sees the head of every message.
      size_t need = protocol::Rewriter::clientBytesNeeded(t, hdr->length);
      if (data.size() - pos < need) break;  // wait for the rest of it
      // Scratch buffers of the loop: nothing below re-enters another session's relay.
      std::string& rw_to_server = loopState().rw_to_server;
      std::string& rw_to_client = loopState().rw_to_client;
      rw_to_server.clear();
      rw_to_client.clear();
      if (refuse_parse != protocol::SessionState::kNone && !rewriter_->skipping()) {
        // In the Parse's place, one PostgreSQL refuses: the server skips to the Sync as after
        // the client's own failed Parse, and the rewriter puts sluice's error where the
        // ParseComplete would have been. (While the server skips, it ignores the Parse anyway.)
        std::string error;
        protocol::appendError(
            error, makeError(sqlstate::kFeatureNotSupported, refusalMessage(refuse_parse)));
        rewriter_->refuseParse(std::move(error), rw_to_server);
        forward(pos);
        server_->send(rw_to_server);
        stats_->bytes_received.add(hdr->total());
        pos += need;  // the whole Parse (Rewriter::clientBytesNeeded)
        fwd_start = pos;
        continue;
      }
      auto action = rewriter_->onClientMessage(data.substr(pos, need), rw_to_server, rw_to_client);
      if (!rw_to_client.empty()) send(rw_to_client);
      if (action == protocol::Rewriter::Action::kWait) {
        if (!rw_to_server.empty()) {  // what the decision waits for
          forward(pos);
          server_->send(rw_to_server);
        }
        rewrite_waiting_ = true;  // offered again after the server's next message
        break;
      }
      if (request) noteRequest();
      if (action == protocol::Rewriter::Action::kReplace) {
        forward(pos);
        server_->send(rw_to_server);
        stats_->bytes_received.add(need);
        pos += need;
        fwd_start = pos;
        passthrough_left_ = hdr->total() - need;
        continue;
      }
    } else {
      if (request) {
        server_->noteQueryForwarded();
        noteRequest();
      }
      if (t == 'S') {
        server_->setUnsynced(false);
      } else if (!request && t != 'd' && t != 'c' && t != 'f') {
        server_->setUnsynced(true);
      }
    }
    size_t n = std::min(hdr->total(), data.size() - pos);
    passthrough_left_ = hdr->total() - n;
    pos += n;
  }
  if (server_) forward(pos);
  in_.consume(pos);
  if (state_ == State::kIdle || state_ == State::kActive) {
    releaseBufferIfDrained();
    startRead();
  }
}

void ClientSession::noteSearchPathEffects(char type, std::string_view msg, bool changes) {
  if (changes) search_path_dirty_ = true;
  if (type == 'Q' || (!changes && !search_path_statements_)) return;
  // Parse: statement name, query, ...; Bind: portal name, statement name, ...
  std::string_view body = msg.substr(protocol::kHeaderSize);
  if (type == 'B') body.remove_prefix(std::min(body.size(), body.find('\0') + 1));
  std::string_view name = body.substr(0, body.find('\0'));
  if (!search_path_statements_)
    search_path_statements_ = std::make_unique<std::vector<std::string>>();
  auto& names = *search_path_statements_;
  auto it = std::find(names.begin(), names.end(), name);
  if (type == 'B') {
    if (it != names.end()) search_path_dirty_ = true;
  } else if (changes && it == names.end()) {
    names.emplace_back(name);
  } else if (!changes && it != names.end()) {
    names.erase(it);  // the name now holds another statement (or "" was parsed again)
  }
}

void ClientSession::readSearchPathThenRelease() {
  state_ = State::kSyncing;
  reading_search_path_ = true;
  auto self = shared_from_this();
  auto server = server_;
  server_->runInternal("SHOW search_path", [self, server](Status st) {
    if (self->server_ != server) {
      // The client left meanwhile and let go of the server (closeQuietly): it goes back to the
      // pool with the value it has.
      if (st && server->state() != ServerState::kClosed) {
        server->setTracked(protocol::kSearchPathSlot,
                           protocol::searchPathValue(server->internalValue()));
        self->pool_->release(server);
      } else if (server->state() != ServerState::kClosed) {
        server->close("could not read search_path back: " + st.message());
      }
      return;
    }
    self->reading_search_path_ = false;
    if (self->state_ != State::kSyncing) return;
    if (!st) {
      // The client's search_path is unknown now: it cannot be carried to another server.
      self->closeWithError(self->server_->state() == ServerState::kClosed
                               ? CloseReason::kServerLost
                               : CloseReason::kParameterSyncFailed,
                           "sluice: could not read search_path back from the server after a "
                           "statement that may have changed it: " +
                               st.message());
      return;
    }
    self->search_path_dirty_ = false;
    self->server_->setTracked(protocol::kSearchPathSlot,
                              protocol::searchPathValue(self->server_->internalValue()));
    self->releaseServer();
    self->state_ = State::kIdle;
    self->processClient();
  });
}

void ClientSession::pin(protocol::SessionState kind) {
  pinned_ = kind;
  stats_->pins[protocol::sessionStateIndex(kind)].add();
  SLOG_INFO(
      "{} pinned to its server connection for the rest of its session: {} is session state "
      "that {} pooling cannot carry (application_name \"{}\", address {}, "
      "session_state = pin)",
      prefix(), protocol::sessionStateWhat(kind), config::poolModeName(mode_), applicationName(),
      peer_);
}

// PostgreSQL itself raises the error: a DO block takes the Query's place, so the answer comes in
// order after earlier pipelined queries, and an open transaction is aborted as the refused
// statement would have aborted it (ReadyForQuery 'E'), exactly as on a direct connection.
std::string ClientSession::refusalMessage(protocol::SessionState kind) const {
  return fmt::format(
      "sluice: {} is session state that transaction pooling cannot carry; refused because "
      "session_state = refuse (pool {} has pool_mode = {}). Set session_state = pin to keep such "
      "a client on one server connection, or use pool_mode = session for this database",
      protocol::sessionStateWhat(kind), pool_->name(), config::poolModeName(mode_));
}

void ClientSession::refuseSessionState(protocol::SessionState kind) {
  refuseWith(refusalMessage(kind), "feature_not_supported");
}

void ClientSession::refuseWith(const std::string& message, const char* errcode) {
  std::string query;
  protocol::appendQuery(
      query, "DO " + protocol::quoteLiteral(
                         std::string("BEGIN RAISE EXCEPTION USING ERRCODE = '") + errcode +
                         "', MESSAGE = " + protocol::quoteLiteral(message) + "; END"));
  if (rewriter_) {
    std::string& to_server = loopState().rw_to_server;
    std::string& to_client = loopState().rw_to_client;
    to_server.clear();
    to_client.clear();
    auto action = rewriter_->onClientMessage(query, to_server, to_client);  // a Query never waits
    if (!to_client.empty()) send(to_client);
    server_->send(action == protocol::Rewriter::Action::kReplace ? to_server : query);
  } else {
    server_->send(query);
    server_->noteQueryForwarded();
  }
  noteRequest();
}

void ClientSession::noteRequest() {
  stats_->query_count.add();
  if (owed() == 1) {
    request_started_ = now();
    if (server_->txStatus() == 'I') xact_started_ = request_started_;
  }
}

int ClientSession::owed() const {
  return rewriter_ ? rewriter_->owedReadyForQuery() : server_->owedReady();
}

bool ClientSession::serverClean() const {
  if (!rewriter_) return server_->clean();
  return rewriter_->idle() && !rewriter_->unsynced() && server_->txStatus() == 'I';
}

void ClientSession::startRelay() {
  synced_version_ = server_->trackedVersion();
  state_ = State::kActive;
  rewrite_enabled_ = mode_ != config::PoolMode::kSession && settings().max_prepared_statements > 0;
}

void ClientSession::startRewriter() {
  server_->statements().setMaxPrepared(size_t(settings().max_prepared_statements));
  if (!statements_) statements_ = std::make_unique<protocol::ClientStatements>();
  rewriter_ = std::make_unique<protocol::Rewriter>(*statements_, server_->statements(),
                                                   server_->txStatus());
}

bool ClientSession::onServerMessage(std::string_view msg, std::string& to_client) {
  if (!rewriter_) return false;
  bool replaced =
      rewriter_->onServerMessage(msg, to_client) == protocol::Rewriter::Action::kReplace;
  if (rewrite_waiting_) {
    rewrite_waiting_ = false;
    auto self = shared_from_this();
    loop_->post([self] {
      if (self->state_ == State::kActive && self->server_) self->processClient();
    });
  }
  return replaced;
}

bool ClientSession::needServer() {
  acquireServer();
  return state_ == State::kActive;
}

void ClientSession::acquireServer() {
  state_ = State::kWaiting;
  // The client has needed a server since its bytes arrived (or since it first asked, when this
  // is a retry): last_activity_ is that moment, and spares a clock read per transaction.
  wait_started_ = last_activity_;
  auto r =
      pool_->acquire(shared_from_this(), applicationName().empty() ? user_ : applicationName());
  if (r.server) {
    attachServer(std::move(r.server), wait_started_);
  } else {
    waitFor(r.wait_id);
  }
}

void ClientSession::onServerAssigned(std::shared_ptr<pool::ServerConn> server) {
  stopHangupWatch();
  if (server->state() == ServerState::kClosed) {
    // It died on the way; ask again if still interested.
    if (closing()) return;
    if (state_ == State::kWelcome) {
      auto r =
          pool_->acquire(shared_from_this(), applicationName().empty() ? user_ : applicationName());
      if (r.server) {
        onServerAssigned(std::move(r.server));
      } else {
        waitFor(r.wait_id);
      }
    } else if (state_ == State::kWaiting) {
      acquireServer();
      if (state_ == State::kActive) processClient();
    }
    return;
  }
  if (closing() || (state_ != State::kWaiting && state_ != State::kWelcome)) {
    // Nobody wants it any more (cancelled or disconnected meanwhile).
    pool_->release(std::move(server));
    return;
  }
  wait_id_ = 0;
  if (state_ == State::kWelcome) {
    pool_->release(std::move(server));  // it only had to log in once for the welcome
    sendWelcome();
    return;
  }
  attachServer(std::move(server), now());
  if (state_ == State::kActive) processClient();
}

void ClientSession::attachServer(std::shared_ptr<pool::ServerConn> server, TimePoint t) {
  if (!server->looksAlive()) {
    // PostgreSQL ended it while it sat in the pool (restart, pg_terminate_backend) and the idle
    // watch has not seen it yet: nothing of this client's was sent, so take another.
    server->close("found closed by the server when taken from the pool");
    acquireServer();
    return;
  }
  server_ = std::move(server);
  server_since_ = t;
  double waited = std::chrono::duration<double>(server_since_ - wait_started_).count();
  stats_->wait_seconds.observe(waited);
  stats_->wait_time_us.add(uint64_t(waited * 1e6));
  // A server unused for server_check_delay is checked first; its check and the parameter sync
  // go in one round trip.
  const auto& s = settings();
  bool check = !s.server_check_query.empty() && t - server_->lastUsed() >= s.server_check_delay;
  server_->attach(this, t);
  std::string sql;
  if (check) {
    sql = s.server_check_query;
    if (sql.back() != ';') sql += ';';
  }
  sql += syncSql();
  if (sql.empty()) {
    startRelay();
    return;
  }
  state_ = State::kSyncing;
  auto self = shared_from_this();
  server_->runInternal(sql, [self](Status st) {
    if (self->state_ != State::kSyncing) return;
    if (!st && self->server_->state() == ServerState::kClosed) {
      // The server died before any of the client's bytes reached it: use another one.
      self->server_->detach();
      self->server_.reset();
      self->acquireServer();
      if (self->state_ == State::kActive) self->processClient();
      return;
    }
    if (!st) {
      self->closeWithError(
          CloseReason::kParameterSyncFailed,
          "sluice: could not apply client parameters on the server: " + st.message());
      return;
    }
    // PostgreSQL does not report search_path: the server has the client's value now.
    self->server_->setTracked(protocol::kSearchPathSlot, self->want_[protocol::kSearchPathSlot]);
    self->startRelay();
    self->processClient();
  });
}

std::string ClientSession::syncSql() {
  const auto& have = server_->tracked();
  if (have.sameObject(want_)) return {};
  if (have == want_) {
    server_->adoptTracked(want_);  // the next hand-over between these two is a pointer check
    return {};
  }
  std::string sql;
  for (size_t i = 0; i < want_.size(); ++i) {
    if (have[i] == want_[i]) continue;
    if (i == protocol::kSearchPathSlot) {
      // The value as SHOW printed it (or a startup value) is what set_config() takes.
      const std::string& v = want_[i];
      sql += v.empty() || v[0] != '='
                 ? std::string("SET search_path TO DEFAULT;")
                 : "SELECT pg_catalog.set_config('search_path', " +
                       protocol::quoteLiteral(std::string_view(v).substr(1)) + ", false);";
      continue;
    }
    std::string name = protocol::kTrackedParams[i];
    std::transform(name.begin(), name.end(), name.begin(), ::tolower);
    sql += "SET " + name + " TO " + protocol::quoteLiteral(want_[i]) + ";";
  }
  return sql;
}

void ClientSession::onServerData(std::string_view bytes) {
  stats_->bytes_sent.add(bytes.size());
  send(bytes);
}

void ClientSession::onServerReady() {
  if (!server_) return;
  auto t = now();
  stats_->query_time_us.add(uint64_t(
      std::chrono::duration_cast<std::chrono::microseconds>(t - request_started_).count()));
  if (server_->txStatus() == 'I' && xact_started_ != TimePoint{}) {
    stats_->xact_count.add();
    stats_->xact_time_us.add(
        uint64_t(std::chrono::duration_cast<std::chrono::microseconds>(t - xact_started_).count()));
    xact_started_ = {};
    ++transactions_;
  }
  if (server_->txStatus() != 'I' && mode_ == config::PoolMode::kStatement) {
    closeWithError(CloseReason::kTransactionInStatementMode,
                   "sluice: transaction blocks are not allowed in statement pool mode "
                   "(pool_mode = statement for " +
                       pool_->name() + ")");
    return;
  }
  // passthrough_left_: part of the next message is already on its way to this server.
  if (mode_ != config::PoolMode::kSession && pinned_ == protocol::SessionState::kNone &&
      serverClean() && passthrough_left_ == 0) {
    if (search_path_dirty_ && server_->pendingCancels == 0) {
      readSearchPathThenRelease();  // the client's new value, before another client's SET
    } else {
      releaseServer(t);
      state_ = State::kIdle;
    }
  }
  if (lazy_rewrite_waiting_) {
    // A message that needs the rewriter waited for this server to owe nothing.
    lazy_rewrite_waiting_ = false;
    auto self = shared_from_this();
    loop_->post([self] {
      if ((self->state_ == State::kActive && self->server_) || self->state_ == State::kIdle) {
        self->processClient();
      }
    });
  }
}

void ClientSession::endHold(TimePoint t) {
  rewriter_.reset();
  double held = std::chrono::duration<double>(t - server_since_).count();
  stats_->hold_seconds.observe(held);
  held_total_s_ += held;
}

void ClientSession::releaseServer(TimePoint t) {
  if (!server_) return;
  if (server_->pendingCancels > 0) {
    release_when_cancelled_ = true;  // a cancel for this server is still in flight
    return;
  }
  endHold(t);
  // Whatever the client changed with SET is its own from now on.
  if (server_->trackedVersion() != synced_version_) want_ = server_->tracked();
  if (search_path_dirty_) {
    // Not read back (the client is leaving): the next client sets it again.
    server_->setTracked(protocol::kSearchPathSlot, protocol::kSearchPathUnknown);
    search_path_dirty_ = false;
  }
  if (settings().server_reset_query_always) {
    pool_->resetAndRelease(std::move(server_));
  } else {
    pool_->release(std::move(server_), t);
  }
}

bool ClientSession::resetPinnedServer() {
  if (pinned_ == protocol::SessionState::kNone || mode_ == config::PoolMode::kSession ||
      !serverClean() || server_->pendingCancels > 0 || state_ != State::kActive) {
    return false;
  }
  // DISCARD ALL (after server_reset_query) ends everything sluice pins for: advisory locks,
  // LISTEN, temporary tables, cursors, prepared statements, SET ROLE / SESSION AUTHORIZATION
  // and settings. The server goes back to the pool once it succeeded, or is closed.
  rewriter_.reset();
  search_path_dirty_ = false;
  double held = secondsSince(server_since_);
  stats_->hold_seconds.observe(held);
  held_total_s_ += held;
  pool_->resetAndRelease(std::move(server_), /*full=*/true);
  return true;
}

void ClientSession::dropServer(const std::string& reason) {
  rewriter_.reset();
  search_path_dirty_ = false;
  if (!server_) return;
  held_total_s_ += secondsSince(server_since_);  // a hold ended by closing the server counts too
  auto s = std::move(server_);
  if (s->owedReady() > 0) cancelAbandoned(*s);
  s->detach();
  s->close(reason);
}

// PostgreSQL notices a closed connection only when it next reads or writes: a query left
// running (its client vanished, or timed out) would go on to its end, holding its locks and its
// connection slot. The server is closed, never reused, so the cancel can hit nothing else.
void ClientSession::cancelAbandoned(const pool::ServerConn& server) {
  sockaddr_storage peer{};
  socklen_t len = sizeof peer;
  if (::getpeername(server.fd(), reinterpret_cast<sockaddr*>(&peer), &len) != 0) return;
  std::string packet;
  protocol::appendCancelRequest(packet, server.backendPid(), server.backendKey());
  CancelForwarder::start(loop_, peer, len, std::move(packet), [] {});
}

void ClientSession::onServerGone(const ErrorInfo& error) {
  rewriter_.reset();
  search_path_dirty_ = false;
  if (server_) held_total_s_ += secondsSince(server_since_);
  server_.reset();
  ErrorInfo e = error;
  e.severity = "FATAL";
  e.message = "sluice: server connection lost: " + error.message;
  closeWithError(e, CloseReason::kServerLost);
}

void ClientSession::onAcquireFailed(const ErrorInfo& error, CloseReason reason) {
  stopHangupWatch();
  if (closing() || (state_ != State::kWaiting && state_ != State::kWelcome)) return;
  wait_id_ = 0;
  ErrorInfo e = error;
  e.severity = "FATAL";  // the connection closes after it, so the client must not retry on it
  closeWithError(e, reason);
}

void ClientSession::onCancelRequest() {
  if (closing()) return;
  if (state_ == State::kWaiting && wait_id_ && pool_->cancelWait(wait_id_)) {
    // The request never reached a server: answer it as PostgreSQL would and drop its bytes.
    wait_id_ = 0;
    size_t buffered = in_.size();
    in_.consume(buffered);
    discard_left_ = passthrough_left_;
    passthrough_left_ = 0;
    std::string out;
    protocol::appendError(
        out, makeError(sqlstate::kQueryCanceled, "canceling statement due to user request"));
    protocol::appendReadyForQuery(out, 'I');
    send(out);
    state_ = State::kIdle;
    startRead();
    return;
  }
  if (!server_ || state_ != State::kActive) return;
  // Forward to PostgreSQL on a connection of its own, with the server's key.
  auto server = server_;
  ++server->pendingCancels;
  auto self = shared_from_this();
  std::string packet;
  protocol::appendCancelRequest(packet, server->backendPid(), server->backendKey());
  auto finish = [self, server] {
    if (--server->pendingCancels == 0 && self->release_when_cancelled_) {
      self->release_when_cancelled_ = false;
      if (self->server_ == server && self->serverClean() &&
          self->pinned_ == protocol::SessionState::kNone) {
        if (self->search_path_dirty_) {
          self->readSearchPathThenRelease();
          return;
        }
        self->releaseServer();
        if (self->state_ == State::kActive) self->state_ = State::kIdle;
        self->processClient();
      }
    }
  };
  // To the address the server connection itself uses.
  sockaddr_storage peer{};
  socklen_t len = sizeof peer;
  if (::getpeername(server->fd(), reinterpret_cast<sockaddr*>(&peer), &len) != 0) {
    loop_->post(std::move(finish));
    return;
  }
  CancelForwarder::start(loop_, peer, len, std::move(packet), std::move(finish));
}

// ---- timeouts (per-loop janitor) ----

void ClientSession::janitor(TimePoint t, const config::Settings& s) {
  if (closing()) return;
  auto over = [&](TimePoint since, Millis limit) {
    return limit.count() > 0 && since != TimePoint{} && t - since >= limit;
  };
  switch (state_) {
    case State::kStartup:
    case State::kAuth:
      if (over(connected_at_, s.client_login_timeout)) {
        closeWithError(CloseReason::kClientLoginTimeout,
                       fmt::format("sluice: client_login_timeout ({} s) expired before "
                                   "login completed",
                                   secs(s.client_login_timeout)));
      }
      break;
    case State::kIdle:
      if (over(last_activity_, s.client_idle_timeout)) {
        closeWithError(CloseReason::kClientIdleTimeout,
                       fmt::format("sluice: client_idle_timeout ({} s): the connection "
                                   "was idle too long",
                                   secs(s.client_idle_timeout)));
      }
      break;
    case State::kActive: {
      if (!server_) break;
      if (owed() > 0) {
        if (over(request_started_, s.query_timeout)) {
          closeWithError(CloseReason::kQueryTimeout,
                         fmt::format("sluice: query_timeout ({} s) exceeded; the query "
                                     "was stopped and the connection closed",
                                     secs(s.query_timeout)));
        }
      } else if (server_->txStatus() != 'I') {
        if (over(last_activity_, s.idle_transaction_timeout)) {
          if (pinned_ == protocol::SessionState::kNone && server_->pendingCancels == 0) {
            // Nothing runs and the client sends nothing: roll its transaction back and give the
            // server to whoever waits, rather than closing it.
            endHold(now());
            bool reset = mode_ == config::PoolMode::kSession || s.server_reset_query_always;
            // The reset may change search_path where sluice does not see it.
            if (reset) server_->setTracked(protocol::kSearchPathSlot, protocol::kSearchPathUnknown);
            pool_->rollbackAndRelease(std::move(server_), reset);
          }
          closeWithError(CloseReason::kIdleTransactionTimeout,
                         fmt::format("sluice: idle_transaction_timeout ({} s): the transaction was "
                                     "idle too long and was rolled back; its server connection "
                                     "went back to the pool",
                                     secs(s.idle_transaction_timeout)));
        }
      } else if (over(last_activity_, s.client_idle_timeout)) {
        closeWithError(CloseReason::kClientIdleTimeout,
                       fmt::format("sluice: client_idle_timeout ({} s): the connection "
                                   "was idle too long",
                                   secs(s.client_idle_timeout)));
      }
      break;
    }
    case State::kWelcome:
    case State::kWaiting:
    case State::kSyncing:
    case State::kClosed:
      break;
  }
}

// ---- admin console ----

void ClientSession::processAdmin() {
  while (state_ == State::kIdle && !admin_busy_) {
    auto hdr = protocol::peekHeader(in_.data());
    if (!hdr) break;
    if (hdr->length < 4 || hdr->length > 1024 * 1024) {
      closeWithError(CloseReason::kProtocolViolation, "sluice: invalid message length");
      return;
    }
    if (in_.size() < hdr->total()) break;
    std::string payload(in_.data().substr(5, hdr->length - 4));
    in_.consume(hdr->total());
    if (hdr->type == 'X') {
      closeQuietly(CloseReason::kClientTerminate);
      return;
    }
    if (hdr->type != 'Q') {
      if (hdr->type != 'S') continue;  // answer an extended-protocol batch once, at its Sync
      std::string out;
      protocol::appendError(out,
                            makeError(sqlstate::kFeatureNotSupported,
                                      "sluice: the admin console accepts only simple queries"));
      protocol::appendReadyForQuery(out, 'I');
      send(out);
      continue;
    }
    std::string sql = payload.substr(0, payload.find('\0'));
    admin_busy_ = true;
    auto self = shared_from_this();
    ctx_->admin->execute(self, sql, [self](std::string out) {
      self->admin_busy_ = false;
      if (self->state_ == State::kClosed) return;
      protocol::appendReadyForQuery(out, 'I');
      self->send(out);
      self->processAdmin();
    });
  }
  if (state_ == State::kIdle && !admin_busy_) startRead();
}

}  // namespace sluice::session
