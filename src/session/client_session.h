// ClientSession: one client connection and the relay between it and the server it borrows.
// Owned by shared_ptr (held by its own pending I/O handlers and, while waiting, by its Pool's
// wait queue); belongs to one EventLoop and is touched only from its thread.
//
// Life: startup packet -> authentication -> welcome (ParameterStatus, BackendKeyData,
// ReadyForQuery) -> idle. The first message of a transaction borrows a server from the pool
// (waiting if none is free), syncs the client's tracked parameters onto it, then bytes flow both
// ways untouched until the server reports ReadyForQuery with nothing owed: in transaction and
// statement mode the server goes back to the pool there; in session mode at disconnect.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "auth/client_auth.h"
#include "common/clock.h"
#include "net/buffer.h"
#include "net/event_loop.h"
#include "net/outbox.h"
#include "net/sys.h"
#include "net/tls.h"
#include "pool/pool.h"
#include "pool/server_conn.h"
#include "protocol/prepared_statements.h"
#include "protocol/session_state.h"
#include "protocol/tracked_params.h"
#include "session/auth_lookup.h"
#include "session/session_context.h"
#include "stats/close_reason.h"

namespace sluice::session {

class ClientSession : public pool::PoolClient,
                      public pool::ServerListener,
                      public net::IoWatcher,
                      public std::enable_shared_from_this<ClientSession> {
 public:
  enum class State : uint8_t {
    kStartup,  // reading the startup packet
    kAuth,     // authentication exchange
    kWelcome,  // logged in, waiting for a first server login to learn the welcome parameters
    kIdle,     // logged in, no server
    kWaiting,  // in the pool's wait queue
    kSyncing,  // server assigned, sluice's parameter sync running on it
    kActive,   // server assigned, relaying
    kClosed,
  };

  // Takes ownership of `fd` (a connected socket).
  ClientSession(SessionContext* ctx, net::EventLoop* loop, int fd, std::string peer);
  ~ClientSession() override;
  void start();

  // Events from other components (on this loop).
  void onCancelRequest();
  void janitor(TimePoint t, const config::Settings& s);
  // The only exits: closeWithError() tells the client why (FATAL, the reason's SQLSTATE) and
  // closes once that is written; closeQuietly() closes at once. Both count the reason.
  void closeWithError(stats::CloseReason reason, std::string message);
  void closeWithError(const protocol::ErrorInfo& e, stats::CloseReason reason);

  // PoolClient
  void onServerAssigned(std::shared_ptr<pool::ServerConn> server) override;
  void onAcquireFailed(const protocol::ErrorInfo& error, stats::CloseReason reason) override;
  net::EventLoop* clientLoop() const override { return loop_; }
  // ServerListener
  void onServerData(std::string_view bytes) override;
  void onServerReady() override;
  void onServerGone(const protocol::ErrorInfo& error) override;
  bool wantsMore() const override;
  bool allowsTransactionBlocks() const override { return mode_ != config::PoolMode::kStatement; }
  bool rewritesServerMessages() const override { return rewriter_ != nullptr; }
  bool onServerMessage(std::string_view msg, std::string& to_client) override;

  // For the admin console and logs.
  uint64_t id() const { return id_; }
  State state() const { return state_; }
  const std::string& user() const { return user_; }
  const std::string& database() const { return database_; }
  const std::string& peer() const { return peer_; }
  const std::string& applicationName() const;
  TimePoint connectedAt() const { return connected_at_; }
  TimePoint requestStartedAt() const { return request_started_; }
  TimePoint waitStartedAt() const { return wait_started_; }  // meaningful while kWaiting
  TimePoint serverSince() const { return server_since_; }    // meaningful while server() is set
  bool isAdmin() const { return is_admin_; }                 // a console session
  const pool::ServerConn* server() const { return server_.get(); }
  std::string prefix() const;  // "[C42 app/alice@10.0.0.5:51234]"
  uint32_t cancelPid() const { return cancel_pid_; }
  int owed() const;  // ReadyForQuery the attached server still owes (server() must be set)
  // For the leak detector, SHOW HOLDERS and per-application metrics.
  TimePoint lastActivityAt() const { return last_activity_; }  // the client's last bytes
  // The first 200 bytes of the last Query or Parse text ("" before the first).
  const std::string& lastStatement() const;
  double heldSecondsTotal() const { return held_total_s_; }  // servers held, released ones
  config::PoolMode poolMode() const { return mode_; }
  const std::shared_ptr<pool::Pool>& pool() const { return pool_; }
  static constexpr size_t kStatementShown = 200;
  bool closing() const { return close_after_write_ || state_ == State::kClosed; }
  // "TLSv1.3/TLS_AES_256_GCM_SHA384" when the client connected with TLS, "" when not.
  std::string tlsDescription() const;
  // The session state that pinned this client to its server (transaction and statement
  // pooling, session_state = pin), kNone while it is not pinned. SHOW HOLDERS shows it.
  protocol::SessionState pinned() const { return pinned_; }

 private:
  void startRead();
  void releaseBufferIfDrained();
  LoopClients& loopState() const;
  void onReadable() override;  // net::IoWatcher
  void onWritable() override;
  void onRead(ssize_t n, int err);
  void send(std::string_view bytes);
  void flushWrites();
  void afterWrite(net::Outbox::Result r);
  void closeQuietly(stats::CloseReason reason, const std::string& detail = "");
  // After an error was written: FIN after it, then read and drop what the client still sends
  // until it closes (or kLingerLimit), so that close() never resets a connection with unread
  // bytes, which would make the client's kernel discard the error before the client reads it.
  void linger();
  void lingerRead();
  void endLinger();

  void processStartup();
  bool handleStartupMessage(const protocol::StartupMessage& m);
  // auth_type = hba: the auth type the first matching line of auth_hba_file gives this client,
  // or nullopt after the client was refused (no line, reject, cert or peer failed).
  std::optional<config::AuthType> hbaAuthType();
  // Starts the exchange of `type` against `secret` (nullptr: unknown user, a mock exchange).
  void beginAuth(config::AuthType type, const std::string* secret);
  // A console user in neither admin_users nor stats_users whose exchange succeeded: refused
  // exactly like a wrong password (28P01), the reason logged.
  void refuseAdmin();
  // The user is in neither auth_file nor [databases]: ask auth_query as `auth_user`, then
  // beginAuth with what it found.
  void startAuthLookup(config::AuthType type, const std::string& auth_user,
                       const std::string& auth_db);
  void processAuth();
  void finishLogin();
  void sendWelcome();
  // TLS from the client (net/tls.h): after an SSLRequest, or direct (PostgreSQL 17) when the
  // connection opens with a TLS record.
  void startTls(std::shared_ptr<const net::TlsContext> tls);
  ssize_t recvTls(char* p, size_t room);
  void sendRaw(std::string_view bytes);
  void processClient();  // relays the client's messages while logged in
  void processAdmin();
  bool needServer();     // returns true if a server is attached and ready to relay
  void acquireServer();  // -> kWaiting, kSyncing or kActive
  void startRelay();     // server synced: -> kActive
  void startRewriter();  // virtualize prepared statements from the next message on
  void noteRequest();    // a Query, Sync or FunctionCall went to the server
  // A Query or Parse creates session state transaction pooling cannot carry (session_state):
  void pin(protocol::SessionState kind);                 // keep this server until the client leaves
  void refuseSessionState(protocol::SessionState kind);  // the Query fails in PostgreSQL (0A000)
  std::string refusalMessage(protocol::SessionState kind) const;  // 0A000's text
  // Answers the Query being relayed with an ErrorResponse raised by PostgreSQL itself
  // (`errcode`: a condition name), instead of running it.
  void refuseWith(const std::string& message, const char* errcode);
  // Keeps the wait id; while queued, watches the socket for the client hanging up (and leaves
  // its bytes unread). stopHangupWatch() when a server or an error comes.
  void waitFor(uint64_t wait_id);
  void stopHangupWatch();
  bool serverClean() const;  // nothing owed, no batch open, transaction idle
  // The transaction may have changed search_path: read it back, then release (-> kSyncing).
  void readSearchPathThenRelease();
  // A Query, Parse or Bind may change search_path (see search_path_dirty_).
  void noteSearchPathEffects(char type, std::string_view msg, bool changes);
  void attachServer(std::shared_ptr<pool::ServerConn> server, TimePoint t);  // t: now
  void releaseServer(TimePoint t = now());
  // The client's hold of server_ ends at t (rewriter, hold statistics); server_ stays set.
  void endHold(TimePoint t);
  void dropServer(const std::string& reason);            // close it: its state is unknown
  void cancelAbandoned(const pool::ServerConn& server);  // see dropServer()
  // A pinned client leaves: reset its server and give it back (false: it cannot be reset now).
  bool resetPinnedServer();
  std::string syncSql();  // SETs that give the server this client's tracked values
  const config::Settings& settings() const;  // this loop's current snapshot

  // Pointers, strings and times first, small fields packed at the end: 10,000 idle clients
  // are 10,000 of these.
  SessionContext* ctx_;
  net::EventLoop* loop_;
  net::EventLoop::Slot* slot_ = nullptr;  // registration with loop_ (from start() to close)
  uint64_t id_;
  std::string peer_;
  net::ByteBuffer in_;
  net::Outbox outbox_;                         // what the client socket did not take yet
  std::unique_ptr<net::TlsStream> tls_;        // set once the client asked for TLS
  std::unique_ptr<std::string> close_detail_;  // why it closes, once it does
  uint64_t transactions_ = 0;                  // server releases, for the close log line
  size_t passthrough_left_ = 0;                // bytes of a relayed client message not yet read
  size_t discard_left_ = 0;                    // bytes of a cancelled message still to drop

  std::string user_;
  std::string database_;
  protocol::TrackedSet want_;    // tracked parameters as this client should see them
  uint64_t synced_version_ = 0;  // server_->trackedVersion() right after the sync
  std::unique_ptr<auth::ClientAuth> auth_;
  // auth_user + auth_query: the lookup in flight, and the secret it found (for the client's
  // exchange and, once that succeeded, the pool's server logins).
  std::shared_ptr<AuthLookup> lookup_;
  std::optional<std::string> looked_up_secret_;
  bool lookup_tried_ = false;
  // The console user is in neither admin_users nor stats_users: the password exchange runs
  // anyway and ends like a wrong password (the reason goes to the log only).
  bool admin_denied_ = false;
  bool pending_login_ = false;  // counted in SessionContext::pending_logins
  void endPendingLogin();
  std::shared_ptr<pool::Pool> pool_;
  pool::PoolShard* stats_ = nullptr;  // this loop's statistics shard of pool_
  std::shared_ptr<pool::ServerConn> server_;
  // This client's named prepared statements (created with its first rewriter).
  std::unique_ptr<protocol::ClientStatements> statements_;
  // While attached (transaction pooling), from the first message that concerns a prepared
  // statement; on the heap so that idle clients do not carry it.
  std::unique_ptr<protocol::Rewriter> rewriter_;
  // Names of the client's prepared statements ("" for the unnamed one) whose text may change
  // search_path: a Bind of one marks the transaction (allocated at the first such Parse).
  std::unique_ptr<std::vector<std::string>> search_path_statements_;
  uint64_t wait_id_ = 0;

  TimePoint connected_at_;
  TimePoint last_activity_;
  TimePoint request_started_;
  TimePoint xact_started_;  // first request of the current transaction
  TimePoint wait_started_;
  TimePoint server_since_;  // when server_ was attached: how long this client has held it
  // The last Query or Parse text, cut at kStatementShown; allocated at the first (idle clients
  // that never sent one carry a pointer).
  std::unique_ptr<std::string> last_statement_;
  double held_total_s_ = 0;  // seconds it held servers, over the leases it gave back

  int fd_;
  uint32_t cancel_pid_ = 0;
  uint32_t cancel_key_ = 0;
  State state_ = State::kStartup;
  stats::CloseReason close_reason_ = stats::CloseReason::kClientEof;
  config::PoolMode mode_ = config::PoolMode::kSession;
  std::array<bool, protocol::kTrackedSlots> want_given_{};  // set at startup
  bool is_admin_ = false;
  bool joined_pool_ = false;  // counted in the pool's clients
  bool admin_busy_ = false;   // an admin command is being answered
  bool log_connections_ = true;
  bool write_in_flight_ = false;  // waiting for writability (or a write failed)
  bool read_in_flight_ = false;
  bool watching_hangup_ = false;  // queued: the read interest only looks for a hang-up
  bool close_after_write_ = false;
  bool lingering_ = false;        // closed after an error; see linger()
  bool rewrite_waiting_ = false;  // a message waits for the server's answer to an earlier one
  bool rewrite_enabled_ = false;  // transaction pooling with max_prepared_statements > 0
  // A message that needs the rewriter waits for the server's answers to earlier simple queries.
  bool lazy_rewrite_waiting_ = false;
  bool release_when_cancelled_ = false;  // release deferred until pending cancels finish
  protocol::SessionState pinned_ = protocol::SessionState::kNone;  // see pinned()
  // Something sent to the current server since it was attached may have changed search_path
  // (transaction and statement pooling): before the server goes back, sluice reads the value.
  bool search_path_dirty_ = false;
  bool reading_search_path_ = false;  // kSyncing: readSearchPathThenRelease() is waiting
  bool direct_tls_ = false;           // TLS without SSLRequest: ALPN "postgresql" is required
};

}  // namespace sluice::session
