// ServerConn: one connection from sluice to PostgreSQL. Owned by shared_ptr: by its Pool while
// idle (in the pool's idle list) and by the ClientSession it is lent to while active. Belongs to
// exactly one EventLoop at a time and is touched only from that loop's thread; a Pool moves an
// idle connection to another loop with detachFromLoop()/attachToLoop() through posted tasks.
//
// It does the login (startup, md5/SCRAM/cleartext), keeps the server's ParameterStatus values,
// transaction status and the number of ReadyForQuery still owed, runs sluice's own queries
// (parameter sync, reset, check) while swallowing their results, and otherwise hands every byte
// it reads to its ServerListener untouched.
#pragma once

#include <sys/socket.h>

#include <array>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "common/clock.h"
#include "common/status.h"
#include "config/config.h"
#include "net/buffer.h"
#include "net/event_loop.h"
#include "net/outbox.h"
#include "net/sys.h"
#include "net/tls.h"
#include "protocol/prepared_statements.h"
#include "protocol/tracked_params.h"
#include "protocol/wire.h"

namespace sluice::pool {

class Pool;

// Receives what an active server sends. Implemented by ClientSession; called on the loop thread.
class ServerListener {
 public:
  virtual ~ServerListener() = default;
  // Bytes to relay as they are (complete or partial messages).
  virtual void onServerData(std::string_view bytes) = 0;
  // A ReadyForQuery arrived and nothing more is owed; the server may be released if its
  // transaction status is idle.
  virtual void onServerReady() = 0;
  // The connection failed or was closed by PostgreSQL; `error` says why.
  virtual void onServerGone(const protocol::ErrorInfo& error) = 0;
  // True while the client can take more data; when false the server stops reading until
  // resumeReading() (backpressure).
  virtual bool wantsMore() const = 0;
  // False in statement mode: a ReadyForQuery that opens a transaction block is then withheld
  // from the client (onServerReady() refuses it instead).
  virtual bool allowsTransactionBlocks() const { return true; }
  // True while the client's prepared statements are being virtualized: every server message
  // then goes through onServerMessage() in order (whole, except the bodies of DataRow,
  // CopyData and FunctionCallResponse), and onServerReady() follows every ReadyForQuery.
  virtual bool rewritesServerMessages() const { return false; }
  // Returns true if `to_client` replaces the message (possibly with nothing).
  virtual bool onServerMessage(std::string_view msg, std::string& to_client) { return false; }
};

// What sluice needs to log in as a user.
struct ServerLogin {
  std::string host;  // "" or "/dir" for a unix socket
  int port = 5432;
  std::string unix_dir;
  std::string dbname;
  std::string user;
  std::string secret;  // plain password, "md5..." or "SCRAM-SHA-256$..." (may be empty)
  std::optional<std::array<uint8_t, 32>> scram_client_key;          // from a client's SCRAM proof
  std::vector<std::pair<std::string, std::string>> startup_params;  // extra, e.g. client_encoding
  Millis connect_timeout{15000};
  // TLS to PostgreSQL over TCP (a unix socket never uses it, as with libpq): from prefer on,
  // sluice asks for it; from require on, plain text is refused; `tls` is the context.
  config::SslMode tls_mode = config::SslMode::kDisable;
  std::shared_ptr<const net::TlsContext> tls;
};

class ServerConn : public net::IoWatcher, public std::enable_shared_from_this<ServerConn> {
 public:
  enum class State {
    kLogin,      // connecting or authenticating
    kIdle,       // in its pool's idle list, watched for EOF
    kActive,     // lent to a client (or running sluice's own query)
    kMigrating,  // moving to another loop
    kClosed,     // socket closed; only stale handlers still reference it
  };

  ServerConn(Pool* pool, net::EventLoop* loop, uint64_t id);
  ~ServerConn();

  // Connects and logs in; `done` runs on the loop with the result. Error messages name the
  // server and what failed; `error_sqlstate` is PostgreSQL's code when it refused the login.
  void connect(const ServerLogin& login, std::function<void(Status, std::string sqlstate)> done);

  // Active use by a client.
  void attach(ServerListener* listener, TimePoint t = now());
  void detach(TimePoint t = now());
  void send(std::string_view bytes);            // queue for writing, start the write if idle
  void noteQueryForwarded() { ++owed_ready_; }  // a Query, Sync or FunctionCall was sent
  void setUnsynced(bool v) { unsynced_ = v; }
  void resumeReading();
  // Runs `sql` as sluice's own query; its results are not relayed. `done` gets an error if
  // PostgreSQL answered with one or the connection failed; it may read internalValue().
  void runInternal(std::string sql, std::function<void(Status)> done);
  // The same with parameters, through the extended protocol (the values never become SQL
  // text); used for auth_query. internalRow() then has every column of the last DataRow.
  void runInternalParams(std::string sql, std::vector<std::optional<std::string>> params,
                         std::function<void(Status)> done);
  // The first column of the last DataRow of sluice's last own query ("" if none, or NULL).
  const std::string& internalValue() const { return internal_value_; }
  // Every column of that row (nullopt: NULL); empty if the query returned no row.
  const std::vector<std::optional<std::string>>& internalRow() const { return internal_row_; }

  // Idle watch: a read that only notices EOF or unexpected bytes while pooled.
  void startIdleWatch();

  // Moving between loops (idle servers only).
  void detachFromLoop();
  void attachToLoop(net::EventLoop* loop);

  // Ends the connection: its pool and budgets count it until PostgreSQL has closed its end (or
  // kDrainLimit passed), since the backend holds its slot until then; state() is kClosed at once.
  void close(const std::string& reason);
  static constexpr Millis kDrainLimit{1000};
  // False if PostgreSQL already closed this connection or sent something while it was idle
  // (a FATAL before going away) that the idle watch has not processed yet. One non-blocking
  // peek; nothing is consumed.
  bool looksAlive() const;

  uint64_t id() const { return id_; }
  State state() const { return state_; }
  void setState(State s) { state_ = s; }
  Pool* pool() const { return pool_; }
  net::EventLoop* loop() const { return loop_; }
  char txStatus() const { return tx_status_; }
  int owedReady() const { return owed_ready_; }
  bool unsynced() const { return unsynced_; }
  bool writeInFlight() const { return write_in_flight_ || !outbox_.empty(); }
  bool clean() const { return tx_status_ == 'I' && owed_ready_ == 0 && !unsynced_ && !internal_; }
  // Current values of the tracked parameters, and a counter bumped whenever one changes.
  const protocol::TrackedSet& tracked() const { return tracked_; }
  // Takes an equal set's storage, so that later comparisons with it are a pointer check.
  void adoptTracked(const protocol::TrackedSet& equal) { tracked_ = equal; }
  // A slot sluice learns itself rather than from ParameterStatus (protocol::kSearchPathSlot).
  void setTracked(size_t slot, std::string_view value) {
    if (tracked_.set(slot, value)) ++tracked_version_;
  }
  uint64_t trackedVersion() const { return tracked_version_; }
  // Prepared statements that exist on this PostgreSQL session (transaction pooling).
  protocol::ServerStatements& statements() { return statements_; }
  const std::vector<std::pair<std::string, std::string>>& welcome() const { return welcome_; }
  uint32_t backendPid() const { return backend_pid_; }
  uint32_t backendKey() const { return backend_key_; }
  const ServerLogin& login() const { return login_; }
  int fd() const { return fd_; }
  // "TLSv1.3/TLS_AES_256_GCM_SHA384" when the connection is encrypted, "" when not (SHOW SERVERS).
  std::string tlsDescription() const;
  TimePoint createdAt() const { return created_at_; }
  TimePoint lastUsed() const { return last_used_; }
  bool attached() const { return listener_ != nullptr; }  // lent to a client right now
  void touch() { last_used_ = now(); }
  std::string describe() const;  // "[S12 db/user@host:port pid=1234]"
  int pendingCancels = 0;        // cancel requests in flight for this server's current query
  uint64_t generation = 0;       // pool generation at creation; older ones close on release

 private:
  void startRead();
  void onReadable() override;  // net::IoWatcher
  void onWritable() override;
  void onRead(ssize_t n, int err);
  void connectTo(const sockaddr_storage& addr, socklen_t len);
  void postFail(std::string why);  // a login failure reported from a fresh task
  void processLogin();
  void processActive();
  bool handleLoginMessage(char type, std::string_view payload);  // false: stop
  void afterWrite(net::Outbox::Result r);
  void fail(const std::string& why, const std::string& sqlstate = {});
  void finishClose();  // deregisters, closes the descriptor, tells the pool
  void drain();        // reads to PostgreSQL's EOF after close()
  void finishLogin(Status st, const std::string& sqlstate);
  void sendStartup();
  void startInternal(std::string_view msg, std::function<void(Status)> done);
  // PostgreSQL's one-byte answer to the SSLRequest; false: stop.
  bool handleTlsAnswer();
  void flushTlsOutput();
  ssize_t recvTls(char* p, size_t room);

  Pool* pool_;
  net::EventLoop* loop_;
  uint64_t id_;
  int fd_ = -1;
  net::EventLoop::Slot* slot_ = nullptr;  // registration with loop_ while connected
  net::EventLoop::TimerId timer_ = 0;     // the login deadline, then the drain limit
  bool draining_ = false;                 // closed, waiting for PostgreSQL's EOF
  bool finished_ = false;                 // finishClose() ran
  bool connecting_ = false;               // connect() in progress: the first writability ends it
  State state_ = State::kLogin;
  ServerLogin login_;
  std::function<void(Status, std::string)> login_done_;
  struct ScramState;
  std::unique_ptr<ScramState> scram_;

  net::ByteBuffer in_;
  // TLS to PostgreSQL: asked for with an SSLRequest (tls_asked_), then every byte goes through
  // tls_ (net/tls.h); the startup packet waits for the handshake (startup_sent_).
  std::unique_ptr<net::TlsStream> tls_;
  bool tls_asked_ = false;
  bool startup_sent_ = false;
  std::string tls_out_;           // ciphertext being handed to the outbox
  net::Outbox outbox_;            // what the socket did not take yet
  std::string scratch_;           // replacement messages from the listener's rewriter
  bool write_in_flight_ = false;  // waiting for writability (or a write failed)
  bool read_in_flight_ = false;
  bool paused_ = false;
  size_t passthrough_left_ = 0;  // bytes of a relayed message not yet seen

  ServerListener* listener_ = nullptr;
  char tx_status_ = 'I';
  int owed_ready_ = 0;
  bool unsynced_ = false;
  // sluice's own query in flight: results swallowed, callback at its ReadyForQuery
  std::function<void(Status)> internal_;
  std::string internal_error_;
  std::string internal_value_;
  std::vector<std::optional<std::string>> internal_row_;

  protocol::ServerStatements statements_;
  protocol::TrackedSet tracked_;
  uint64_t tracked_version_ = 0;
  std::vector<std::pair<std::string, std::string>> welcome_;  // ParameterStatus at login
  uint32_t backend_pid_ = 0;
  uint32_t backend_key_ = 0;
  TimePoint created_at_;
  TimePoint last_used_;
};

}  // namespace sluice::pool
