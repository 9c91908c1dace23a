#include "pool/server_conn.h"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <thread>

#include "common/log.h"
#include "pool/pool.h"
#include "protocol/auth_crypto.h"
#include "protocol/sqlstate.h"

namespace sluice::pool {

using protocol::ErrorInfo;

namespace {
constexpr size_t kReadChunk = size_t{16} * 1024;
// Relayed data above this in the client's write buffer pauses reading from the server.
}  // namespace

struct ServerConn::ScramState {
  std::optional<protocol::ScramClient> client;
};

ServerConn::ServerConn(Pool* pool, net::EventLoop* loop, uint64_t id)
    : pool_(pool), loop_(loop), id_(id), created_at_(now()), last_used_(created_at_) {}

ServerConn::~ServerConn() {
  if (fd_ >= 0) ::close(fd_);  // only when its loop ended before the connection did
}

std::string ServerConn::describe() const {
  return fmt::format("[S{} {}/{}@{}:{} pid={}]", id_, login_.dbname, login_.user,
                     login_.host.empty() ? login_.unix_dir : login_.host, login_.port,
                     backend_pid_);
}

namespace {
std::string serverWhere(const ServerLogin& l) {
  return fmt::format("{}:{}", l.host.empty() ? l.unix_dir : l.host, l.port);
}
}  // namespace

void ServerConn::connect(const ServerLogin& login, std::function<void(Status, std::string)> done) {
  login_ = login;
  login_done_ = std::move(done);
  state_ = State::kLogin;
  auto self = shared_from_this();
  timer_ = loop_->runAfter(login_.connect_timeout, [self] {
    self->timer_ = 0;
    if (self->state_ != State::kLogin) return;
    self->fail(
        fmt::format("server_connect_timeout ({} s) expired while connecting to {}",
                    self->login_.connect_timeout.count() / 1000.0, serverWhere(self->login_)),
        sqlstate::kConnectionFailure);
  });

  sockaddr_storage ss{};
  if (login_.host.empty() || login_.host[0] == '/') {
    std::string dir = login_.host.empty() ? login_.unix_dir : login_.host;
    std::string path = fmt::format("{}/.s.PGSQL.{}", dir, login_.port);
    auto* un = reinterpret_cast<sockaddr_un*>(&ss);
    if (path.size() >= sizeof un->sun_path) {
      return postFail("unix socket path too long: " + path);
    }
    un->sun_family = AF_UNIX;
    std::memcpy(un->sun_path, path.c_str(), path.size() + 1);
    return connectTo(ss, socklen_t(offsetof(sockaddr_un, sun_path) + path.size() + 1));
  }
  auto* in4 = reinterpret_cast<sockaddr_in*>(&ss);
  auto* in6 = reinterpret_cast<sockaddr_in6*>(&ss);
  if (::inet_pton(AF_INET, login_.host.c_str(), &in4->sin_addr) == 1) {
    in4->sin_family = AF_INET;
    in4->sin_port = htons(uint16_t(login_.port));
    return connectTo(ss, sizeof(sockaddr_in));
  }
  if (::inet_pton(AF_INET6, login_.host.c_str(), &in6->sin6_addr) == 1) {
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(uint16_t(login_.port));
    return connectTo(ss, sizeof(sockaddr_in6));
  }
  // A host name: getaddrinfo() blocks, so it runs on a thread of its own and the connect
  // continues on this loop.
  net::EventLoop* loop = loop_;
  std::thread([self, loop, host = login_.host, port = login_.port] {
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    int rc = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res);
    sockaddr_storage found{};
    socklen_t found_len = 0;
    std::string err;
    if (rc == 0 && res != nullptr && res->ai_addrlen <= sizeof found) {
      std::memcpy(&found, res->ai_addr, res->ai_addrlen);
      found_len = res->ai_addrlen;
    } else {
      err = rc != 0 ? ::gai_strerror(rc) : "no addresses";
    }
    if (res != nullptr) ::freeaddrinfo(res);
    loop->post([self, found, found_len, err] {
      if (self->state_ != State::kLogin) return;
      if (!err.empty()) {
        self->fail(fmt::format("could not resolve server host \"{}\": {}", self->login_.host, err),
                   sqlstate::kConnectionFailure);
        return;
      }
      self->connectTo(found, found_len);
    });
  }).detach();
}

void ServerConn::postFail(std::string why) {
  auto self = shared_from_this();
  loop_->post([self, why = std::move(why)] {
    if (self->state_ == State::kLogin) self->fail(why, sqlstate::kConnectionFailure);
  });
}

void ServerConn::connectTo(const sockaddr_storage& addr, socklen_t len) {
  fd_ = ::socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd_ < 0) {
    return postFail(fmt::format("could not create a socket for server {}: {}", serverWhere(login_),
                                std::strerror(errno)));
  }
  if (addr.ss_family != AF_UNIX) {
    int one = 1;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  int rc = ::connect(fd_, reinterpret_cast<const sockaddr*>(&addr), len);
  if (rc != 0 && errno != EINPROGRESS) {
    return postFail(fmt::format("could not connect to server {}: {}", serverWhere(login_),
                                std::strerror(errno)));
  }
  slot_ = loop_->add(fd_, this, shared_from_this());
  connecting_ = true;
  loop_->wantWrite(slot_);
}

// Writes go straight to the socket (net::Outbox); see ClientSession::send. A failure found while
// another component's handler is on the stack is reported from a fresh handler.
void ServerConn::send(std::string_view bytes) {
  if (state_ == State::kClosed) return;
  if (tls_) {
    tls_out_.clear();
    if (!tls_->write(bytes, &tls_out_)) {
      auto self = shared_from_this();
      loop_->post([self] {
        if (self->state_ == State::kClosed) return;
        self->fail("TLS with server failed: " + self->tls_->error(), sqlstate::kConnectionFailure);
      });
      return;
    }
    bytes = tls_out_;
  }
  if (write_in_flight_ || connecting_) {
    outbox_.queue(bytes);
    return;
  }
  afterWrite(outbox_.write(fd_, bytes));
}

void ServerConn::afterWrite(net::Outbox::Result r) {
  if (r == net::Outbox::Result::kDone) return;
  write_in_flight_ = true;
  if (r == net::Outbox::Result::kError) {
    auto self = shared_from_this();
    loop_->post([self] {
      if (self->state_ == State::kClosed || self->slot_ == nullptr) return;
      self->onWritable();  // flush() reports the error again there
    });
    return;
  }
  net::EventLoop::full(slot_);
  loop_->wantWrite(slot_);
}

void ServerConn::onWritable() {
  if (state_ == State::kClosed) return;
  if (connecting_) {
    connecting_ = false;
    int err = 0;
    socklen_t len = sizeof err;
    if (::getsockopt(fd_, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
    if (err != 0) {
      fail(fmt::format("could not connect to server {}: {}", serverWhere(login_),
                       std::strerror(err)),
           sqlstate::kConnectionFailure);
      return;
    }
    bool tcp = !(login_.host.empty() || login_.host[0] == '/');
    if (tcp && login_.tls && login_.tls_mode != config::SslMode::kDisable) {
      std::string req;
      protocol::appendSslRequest(req);
      tls_asked_ = true;
      send(req);
    } else {
      sendStartup();
    }
    startRead();
    return;
  }
  write_in_flight_ = false;
  auto r = outbox_.flush(fd_);
  if (r == net::Outbox::Result::kError) {
    fail("could not send data to server: " + std::string(std::strerror(outbox_.error())),
         sqlstate::kConnectionFailure);
    return;
  }
  afterWrite(r);
}

void ServerConn::sendStartup() {
  startup_sent_ = true;
  std::vector<std::pair<std::string, std::string>> params = {{"user", login_.user},
                                                             {"database", login_.dbname}};
  for (const auto& p : login_.startup_params) params.push_back(p);
  std::string pkt;
  protocol::appendStartup(pkt, params);
  send(pkt);
}

bool ServerConn::handleTlsAnswer() {
  tls_asked_ = false;
  char answer = in_.data()[0];
  if (answer == 'S') {
    if (in_.size() > 1) {  // bytes before the handshake could be injected by a man in the middle
      fail("server sent unencrypted data after accepting TLS", sqlstate::kProtocolViolation);
      return false;
    }
    in_.consume(1);
    tls_ = std::make_unique<net::TlsStream>(login_.tls, login_.host,
                                            login_.tls_mode == config::SslMode::kVerifyFull);
    if (!tls_->error().empty()) {
      fail(tls_->error(), sqlstate::kConnectionFailure);
      return false;
    }
    // Start the handshake (the ClientHello goes out); the startup packet follows its end.
    char* p = in_.prepare(kReadChunk);
    ssize_t n = recvTls(p, in_.writable());
    if (n > 0) in_.commit(size_t(n));
    if (n < 0 && errno == EPROTO) {
      fail(fmt::format("TLS with server {} failed: {}", serverWhere(login_), tls_->error()),
           sqlstate::kConnectionFailure);
      return false;
    }
    return true;
  }
  if (answer == 'N') {
    in_.consume(1);
    if (login_.tls_mode >= config::SslMode::kRequire) {
      fail(fmt::format("server {} does not accept TLS and server_tls_sslmode is {}; enable ssl in "
                       "PostgreSQL or lower server_tls_sslmode to prefer",
                       serverWhere(login_), config::sslModeName(login_.tls_mode)),
           sqlstate::kConnectionFailure);
      return false;
    }
    sendStartup();
    return true;
  }
  fail(fmt::format("server {} answered the TLS request with '{}'", serverWhere(login_),
                   answer == 'E' ? std::string("an error") : std::string(1, answer)),
       sqlstate::kProtocolViolation);
  return false;
}

void ServerConn::flushTlsOutput() {
  tls_out_.clear();
  tls_->takeOutput(&tls_out_);
  if (tls_out_.empty()) return;
  if (write_in_flight_ || connecting_) {
    outbox_.queue(tls_out_);
  } else {
    afterWrite(outbox_.write(fd_, tls_out_));
  }
}

ssize_t ServerConn::recvTls(char* p, size_t room) {
  bool drained = false;
  ssize_t n = tls_->read(fd_, p, room, &drained);
  int err = errno;
  flushTlsOutput();
  if (n > 0 && tls_->buffered()) {
    net::EventLoop::mayBeReadable(slot_);
  } else if (drained) {
    net::EventLoop::drained(slot_);
  }
  if (!startup_sent_ && tls_->handshakeDone() && state_ == State::kLogin) sendStartup();
  errno = err;
  return n;
}

std::string ServerConn::tlsDescription() const {
  if (!tls_ || !tls_->handshakeDone()) return {};
  return tls_->version() + "/" + tls_->cipher();
}

void ServerConn::startRead() {
  if (read_in_flight_ || state_ == State::kClosed || slot_ == nullptr) return;
  read_in_flight_ = true;
  loop_->wantRead(slot_);
}

void ServerConn::onReadable() {
  read_in_flight_ = false;
  if (draining_) {
    drain();
    return;
  }
  if (state_ == State::kClosed) return;
  char* p = in_.prepare(kReadChunk);
  size_t room = in_.writable();
  if (tls_) {
    ssize_t n = recvTls(p, room);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
      startRead();
      return;
    }
    if (n < 0 && errno == EPROTO) {
      fail(fmt::format("TLS with server {} failed: {}", serverWhere(login_), tls_->error()),
           sqlstate::kConnectionFailure);
      return;
    }
    onRead(n, n < 0 ? errno : 0);
    return;
  }
  ssize_t n = net::sysRecv(fd_, p, room, MSG_DONTWAIT);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
    if (errno != EINTR) net::EventLoop::drained(slot_);
    startRead();
    return;
  }
  if (n > 0 && size_t(n) < room) net::EventLoop::drained(slot_);  // a short read empties it
  onRead(n, n < 0 ? errno : 0);
}

// n > 0: bytes read; 0: PostgreSQL closed; < 0: `err` says why.
void ServerConn::onRead(ssize_t n, int err) {
  if (state_ == State::kClosed) return;
  if (n <= 0) {
    fail(n == 0 ? std::string("server closed the connection unexpectedly")
                : "could not receive data from server: " + std::string(std::strerror(err)),
         sqlstate::kConnectionFailure);
    return;
  }
  in_.commit(size_t(n));
  if (state_ == State::kLogin) {
    processLogin();
  } else if (state_ == State::kActive) {
    processActive();
  } else if (state_ == State::kIdle) {
    // PostgreSQL sends nothing to an idle connection except a FATAL before it goes away.
    auto hdr = protocol::peekHeader(in_.data());
    std::string why = "server sent data while idle";
    if (hdr && hdr->type == 'E' && in_.size() >= hdr->total()) {
      auto f = protocol::parseErrorFields(in_.data().substr(5, hdr->length - 4));
      why = "server closed the idle connection: " + f['M'];
    }
    fail(why, sqlstate::kAdminShutdown);
  }
}

void ServerConn::processLogin() {
  if (tls_asked_ && !in_.empty() && !handleTlsAnswer()) return;
  while (state_ == State::kLogin) {
    auto hdr = protocol::peekHeader(in_.data());
    if (!hdr) break;
    if (hdr->length < 4 || hdr->length > 1024 * 1024) {
      fail("server sent an invalid message during login", sqlstate::kProtocolViolation);
      return;
    }
    if (in_.size() < hdr->total()) break;
    std::string msg(in_.data().substr(5, hdr->length - 4));
    in_.consume(hdr->total());
    if (!handleLoginMessage(hdr->type, msg)) return;
  }
  if (state_ == State::kLogin) startRead();
}

bool ServerConn::handleLoginMessage(char type, std::string_view payload) {
  protocol::Reader r(payload);
  switch (type) {
    case 'R': {
      int32_t code = r.int32();
      std::string out;
      if (code == protocol::kAuthOk) return true;
      if (code == protocol::kAuthCleartext) {
        if (login_.secret.empty() ||
            protocol::secretKind(login_.secret) != protocol::SecretKind::kPlain) {
          fail(
              "server asked for a cleartext password and sluice has no plain password for user \"" +
                  login_.user + "\"",
              sqlstate::kInvalidPassword);
          return false;
        }
        protocol::appendPassword(out, login_.secret);
      } else if (code == protocol::kAuthMd5) {
        std::string_view salt = r.bytes(4);
        if (r.failed()) break;
        std::string secret;
        switch (protocol::secretKind(login_.secret)) {
          case protocol::SecretKind::kPlain:
            secret = protocol::md5PasswordSecret(login_.user, login_.secret);
            break;
          case protocol::SecretKind::kMd5:
            secret = login_.secret;
            break;
          case protocol::SecretKind::kScram:
            fail("server asked for md5 but only a SCRAM secret is known for user \"" + login_.user +
                     "\"",
                 sqlstate::kInvalidPassword);
            return false;
        }
        if (login_.secret.empty()) {
          fail("server asked for a password and none is configured for user \"" + login_.user +
                   "\" (set password= in [databases] or add the user to auth_file)",
               sqlstate::kInvalidPassword);
          return false;
        }
        protocol::appendPassword(out, protocol::md5SaltedResponse(
                                          secret, reinterpret_cast<const uint8_t*>(salt.data())));
      } else if (code == protocol::kAuthSasl) {
        bool has_scram = false;
        while (!r.atEnd() && !r.failed()) {
          auto mech = r.cstring();
          if (mech == "SCRAM-SHA-256") has_scram = true;
          if (mech.empty()) break;
        }
        if (!has_scram) {
          fail("server offers no supported SASL mechanism", sqlstate::kFeatureNotSupported);
          return false;
        }
        scram_ = std::make_unique<ScramState>();
        auto kind = protocol::secretKind(login_.secret);
        if (kind == protocol::SecretKind::kPlain && !login_.secret.empty()) {
          scram_->client.emplace(protocol::ScramClient::fromPassword(login_.secret));
        } else if (kind == protocol::SecretKind::kScram && login_.scram_client_key) {
          auto sec = protocol::parseScramSecret(login_.secret);
          scram_->client.emplace(
              protocol::ScramClient::fromKeys(*login_.scram_client_key, sec->server_key));
        } else {
          fail("server asked for SCRAM and sluice has no usable password for user \"" +
                   login_.user +
                   "\" (a plain password is needed, or a SCRAM secret after the client logged in "
                   "with SCRAM)",
               sqlstate::kInvalidPassword);
          return false;
        }
        protocol::appendSaslInitialResponse(out, "SCRAM-SHA-256", scram_->client->clientFirst());
      } else if (code == protocol::kAuthSaslContinue) {
        if (!scram_) break;
        auto res = scram_->client->handleServerFirst(r.rest());
        if (!res) {
          fail("SCRAM exchange with server failed: " + res.message(), sqlstate::kInvalidPassword);
          return false;
        }
        protocol::appendSaslResponse(out, *res);
      } else if (code == protocol::kAuthSaslFinal) {
        if (!scram_) break;
        Status st = scram_->client->handleServerFinal(r.rest());
        if (!st) {
          fail("SCRAM server signature check failed: " + st.message(), sqlstate::kInvalidPassword);
          return false;
        }
        return true;
      } else {
        fail(fmt::format("server asked for an unsupported authentication method ({})", code),
             sqlstate::kFeatureNotSupported);
        return false;
      }
      send(out);
      return true;
    }
    case 'S': {
      std::string name(r.cstring());
      std::string value(r.cstring());
      if (r.failed()) break;
      if (auto i = protocol::trackedIndex(name)) tracked_.set(*i, value);
      welcome_.emplace_back(std::move(name), std::move(value));
      return true;
    }
    case 'K':
      backend_pid_ = uint32_t(r.int32());
      backend_key_ = uint32_t(r.int32());
      if (r.failed()) break;
      return true;
    case 'N':
      return true;
    case 'E': {
      auto f = protocol::parseErrorFields(payload);
      fail("server login failed: " + f['M'], f['C']);
      return false;
    }
    case 'Z':
      tx_status_ = r.byte();
      loop_->cancelTimer(timer_);
      timer_ = 0;
      state_ = State::kActive;
      scram_.reset();
      finishLogin(Status::ok(), "");
      return false;
    default:
      break;
  }
  fail(fmt::format("server sent an unexpected message '{}' during login", type),
       sqlstate::kProtocolViolation);
  return false;
}

void ServerConn::finishLogin(Status st, const std::string& sqlstate) {
  auto done = std::move(login_done_);
  login_done_ = nullptr;
  if (done) done(std::move(st), sqlstate);
}

void ServerConn::attach(ServerListener* listener, TimePoint t) {
  listener_ = listener;
  state_ = State::kActive;
  paused_ = false;
  last_used_ = t;
  startRead();
}

void ServerConn::detach(TimePoint t) {
  listener_ = nullptr;
  last_used_ = t;
}

void ServerConn::resumeReading() {
  if (!paused_) return;
  paused_ = false;
  processActive();
}

void ServerConn::runInternalParams(std::string sql, std::vector<std::optional<std::string>> params,
                                   std::function<void(Status)> done) {
  std::string msg;
  protocol::appendParameterizedQuery(msg, sql, params);
  startInternal(msg, std::move(done));
}

void ServerConn::runInternal(std::string sql, std::function<void(Status)> done) {
  std::string msg;
  protocol::appendQuery(msg, sql);
  startInternal(msg, std::move(done));
}

void ServerConn::startInternal(std::string_view msg, std::function<void(Status)> done) {
  internal_ = std::move(done);
  internal_error_.clear();
  internal_value_.clear();
  internal_row_.clear();
  ++owed_ready_;
  send(msg);
  startRead();
}

// Relays what the server sent. Messages sluice must see (ReadyForQuery, ParameterStatus, and
// everything while its own query runs) are read whole; the rest streams through in pieces.
void ServerConn::processActive() {
  std::string_view data = in_.data();
  size_t pos = 0;
  size_t fwd_start = 0;
  bool ready = false;
  auto forward = [&](size_t end) {
    if (end > fwd_start && listener_)
      listener_->onServerData(data.substr(fwd_start, end - fwd_start));
    fwd_start = end;
  };
  // Whether the listener's rewriter sees every message; it changes only when sluice's own query
  // ends (its callback may start the relay), so it is evaluated there again.
  bool rw = !internal_ && listener_ && listener_->rewritesServerMessages();
  while (pos < data.size() && state_ == State::kActive) {
    if (passthrough_left_ > 0) {
      size_t n = std::min(passthrough_left_, data.size() - pos);
      pos += n;
      passthrough_left_ -= n;
      continue;
    }
    auto hdr = protocol::peekHeader(data.substr(pos));
    if (!hdr) break;
    if (hdr->length < 4) {
      forward(pos);
      fail("server sent an invalid message length", sqlstate::kProtocolViolation);
      return;
    }
    char t = hdr->type;
    // The prepared-statement rewriter sees every message, in order, once sluice's own query
    // (if any) is done.
    bool whole = internal_ || t == 'Z' || t == 'S' || t == 'E' ||
                 (rw && protocol::Rewriter::serverBodyNeeded(t));
    if (!whole) {
      if (rw) listener_->onServerMessage(data.substr(pos, protocol::kHeaderSize), scratch_);
      size_t n = std::min(hdr->total(), data.size() - pos);
      passthrough_left_ = hdr->total() - n;
      pos += n;
      continue;
    }
    if (data.size() - pos < hdr->total()) {
      if (hdr->total() > size_t{64} * 1024 * 1024) {
        fail("server sent an oversized message", sqlstate::kProtocolViolation);
        return;
      }
      break;
    }
    std::string_view payload = data.substr(pos + 5, hdr->length - 4);
    if (t == 'S') {
      protocol::Reader r(payload);
      std::string_view name = r.cstring();
      std::string_view value = r.cstring();
      auto i = protocol::trackedIndex(name);
      if (!r.failed() && i && tracked_.set(*i, value)) ++tracked_version_;
    } else if (t == 'Z') {
      tx_status_ = payload.empty() ? 'I' : payload[0];
      if (owed_ready_ > 0) --owed_ready_;
    }
    if (internal_) {
      // sluice's own query: swallow everything, remember an error, finish at ReadyForQuery.
      forward(pos);
      if (t == 'E') internal_error_ = protocol::parseErrorFields(payload)['M'];
      if (t == 'D') {
        // DataRow: int16 column count, then per column an int32 length (-1: NULL) and bytes.
        protocol::Reader r(payload);
        int16_t columns = r.int16();
        internal_row_.clear();
        for (int16_t c = 0; c < columns && !r.failed(); ++c) {
          int32_t len = r.int32();
          if (len < 0) {
            internal_row_.emplace_back(std::nullopt);
          } else {
            std::string_view v = r.bytes(size_t(len));
            internal_row_.emplace_back(std::string(r.failed() ? std::string_view() : v));
          }
        }
        if (r.failed()) internal_row_.clear();
        internal_value_ = !internal_row_.empty() && internal_row_[0] ? *internal_row_[0] : "";
      }
      pos += hdr->total();
      fwd_start = pos;
      if (t == 'Z') {
        auto done = std::move(internal_);
        internal_ = nullptr;
        in_.consume(pos);
        data = in_.data();
        pos = fwd_start = 0;
        done(internal_error_.empty() ? Status::ok() : Status::error(internal_error_));
        rw = !internal_ && listener_ && listener_->rewritesServerMessages();
        if (state_ != State::kActive) return;
      }
      continue;
    }
    if (t == 'E') {
      // Errors PostgreSQL sends a client, by SQLSTATE (rare: the map is no cost that matters).
      pool_->shard(loop_->index()).server_errors.add(protocol::parseErrorFields(payload)['C']);
    }
    if (t == 'Z' && tx_status_ != 'I' && listener_ && !listener_->allowsTransactionBlocks()) {
      forward(pos);
      pos += hdr->total();
      fwd_start = pos;
      ready = true;
      break;
    }
    if (rw) {
      scratch_.clear();
      if (listener_->onServerMessage(data.substr(pos, hdr->total()), scratch_)) {
        forward(pos);
        if (!scratch_.empty()) listener_->onServerData(scratch_);
        fwd_start = pos + hdr->total();
      }
      pos += hdr->total();
      if (t == 'Z') ready = true;  // the listener knows whether anything is still owed
      continue;
    }
    pos += hdr->total();
    if (t == 'Z' && owed_ready_ == 0 && !unsynced_) ready = true;
  }
  forward(pos);
  in_.consume(pos);
  if (state_ != State::kActive) return;
  if (ready && listener_) {
    listener_->onServerReady();
    if (state_ != State::kActive || !listener_) return;  // released: an idle watch may be reading
  }
  if (listener_ && !listener_->wantsMore()) {
    paused_ = true;
    return;
  }
  if (listener_ || internal_) startRead();
}

void ServerConn::startIdleWatch() {
  state_ = State::kIdle;
  startRead();  // servers are few: each keeps its read buffer
}

// The old loop forgets the descriptor (events it already fetched for it are dropped); the new
// one registers it again, and epoll reports whatever is already readable.
void ServerConn::detachFromLoop() {
  state_ = State::kMigrating;
  if (timer_ != 0) loop_->cancelTimer(timer_);
  timer_ = 0;
  loop_->remove(slot_);
  slot_ = nullptr;
}

void ServerConn::attachToLoop(net::EventLoop* loop) {
  loop_ = loop;
  if (fd_ >= 0) slot_ = loop->add(fd_, this, shared_from_this());
  read_in_flight_ = false;
  write_in_flight_ = false;
  state_ = State::kActive;
}

void ServerConn::fail(const std::string& why, const std::string& sqlstate) {
  if (state_ == State::kClosed) return;
  State was = state_;
  auto internal = std::move(internal_);  // close() drops it
  internal_ = nullptr;
  close(why);
  ErrorInfo e;
  e.severity = "FATAL";
  e.sqlstate = sqlstate.empty() ? sqlstate::kConnectionFailure : sqlstate;
  e.message = why;
  if (was == State::kLogin) {
    finishLogin(Status::error(why), e.sqlstate);
    return;
  }
  if (internal) internal(Status::error(why));
  if (listener_) {
    auto* l = listener_;
    listener_ = nullptr;
    l->onServerGone(e);
  }
}

bool ServerConn::looksAlive() const {
  if (state_ == State::kClosed) return false;
  char c;
  ssize_t n = net::sysRecv(fd_, &c, 1, MSG_PEEK | MSG_DONTWAIT);
  return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

void ServerConn::close(const std::string& reason) {
  if (state_ == State::kClosed) return;
  bool said_bye = false;
  if ((state_ == State::kActive || state_ == State::kIdle) && !write_in_flight_ &&
      outbox_.empty() && slot_ != nullptr) {
    std::string bye;
    protocol::appendTerminate(bye);
    if (tls_) {
      std::string plain = std::move(bye);
      bye.clear();
      if (!tls_->write(plain, &bye)) bye.clear();
    }
    said_bye = !bye.empty() && ::send(fd_, bye.data(), bye.size(), MSG_NOSIGNAL | MSG_DONTWAIT) ==
                                   ssize_t(bye.size());
  }
  state_ = State::kClosed;
  // Nobody waits for sluice's own query any more; its callback may hold this connection.
  internal_ = nullptr;
  SLOG_INFO("{} closing: {} (age {:.1f} s)", describe(), reason, secondsSince(created_at_));
  if (!said_bye) {
    finishClose();
    return;
  }
  // PostgreSQL keeps the backend's connection slot until the backend has read the Terminate
  // and exited, which it shows by closing its end. Until then this server still counts against
  // the pool and its budgets, so that a freed slot is never reused while PostgreSQL still
  // counts it taken (no phantom room); a backend that does not close within kDrainLimit is
  // counted gone anyway.
  draining_ = true;
  pool_->forgetIdle(this);  // nobody may take it while it drains
  ::shutdown(fd_, SHUT_WR);
  if (timer_ != 0) loop_->cancelTimer(timer_);
  auto self = shared_from_this();
  timer_ = loop_->runAfter(kDrainLimit, [self] {
    self->timer_ = 0;
    self->finishClose();
  });
  read_in_flight_ = true;
  loop_->wantRead(slot_);
}

void ServerConn::finishClose() {
  if (finished_) return;
  finished_ = true;
  draining_ = false;
  loop_->release(timer_, slot_, fd_);
  pool_->onServerClosed(this);
}

void ServerConn::drain() {
  char sink[512];
  for (;;) {
    ssize_t n = net::sysRecv(fd_, sink, sizeof sink, MSG_DONTWAIT);
    if (n > 0) continue;  // whatever it still sent (a notice): nobody reads it now
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      net::EventLoop::drained(slot_);
      read_in_flight_ = true;
      loop_->wantRead(slot_);
      return;
    }
    if (n < 0 && errno == EINTR) continue;
    finishClose();  // EOF (the backend is gone) or an error
    return;
  }
}

}  // namespace sluice::pool
