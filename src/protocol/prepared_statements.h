// Protocol-level prepared statements in transaction pooling (issue 4): a client's named
// statements (extended-protocol Parse with a non-empty name) keep working although each
// transaction may run on a different server connection, as in PgBouncer 1.21+.
//
// Three pieces, all pure (no I/O, no clock; the only global is an atomic id counter) so they can
// be tested with golden bytes:
//  - ClientStatements: one per client; the statements the client has prepared, by its names.
//  - ServerStatements: one per server connection; which statements are prepared on it, under
//    which server-side name ("sluice_s<N>"), in LRU order, capped at max_prepared_statements.
//  - Rewriter: one per (client, server) attachment; rewrites each client message for the server
//    (renames, injects a Parse where the server lacks the statement, answers from the cache) and
//    filters each server message for the client, keeping a FIFO of what every message sent to the
//    server will be answered with and who must see it.
//
// Ownership and threads: a ClientStatements is owned by its ClientSession, a ServerStatements
// lives exactly as long as its server connection (held for the ServerConn, it moves between
// loops with it through the same posted tasks), a Rewriter is owned by the ClientSession while
// the server is attached. None is thread-safe; all three are touched only
// on the loop that owns the client (and, while attached, the server). A ServerStatements keeps its
// own copies of query texts, so nothing is shared between clients or loops.
//
// The unnamed statement "" and all portals are never virtualized: they pass through unchanged.
// SQL-level PREPARE/EXECUTE is not virtualized either (it is session state, see issue 4).
#pragma once

#include <cstdint>
#include <list>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace sluice::protocol {

// What a SQL command does to prepared statements.
enum class SqlCommand : uint8_t {
  kOther,          // nothing
  kDeallocate,     // DEALLOCATE [PREPARE] name
  kDeallocateAll,  // DEALLOCATE [PREPARE] ALL
  kDiscardAll,     // DISCARD ALL (deallocates everything, among other things)
};

struct SqlInspection {
  SqlCommand command = SqlCommand::kOther;
  std::string name;  // kDeallocate: the statement name as PostgreSQL reads the identifier
  // kDeallocateAll: how many non-empty statements precede it in the query string (each answers
  // with one CommandComplete), so the relay knows when it has run.
  int index = 0;
};

// Looks at a query string (a Query message's text or a Parse's query): case-insensitive,
// tolerant of whitespace, comments and a trailing ';'; quoted strings, quoted identifiers and
// dollar quotes are skipped when splitting at ';'. DEALLOCATE name and DISCARD ALL are recognized
// only as the whole query (DISCARD ALL cannot run in a multi-statement query anyway);
// DEALLOCATE ALL also as one statement of several.
SqlInspection inspectSql(std::string_view sql);
// False when `sql` certainly holds no DEALLOCATE or DISCARD (a cheap scan before inspectSql).
bool mayDeallocate(std::string_view sql);

// True if running `sql` (e.g. server_reset_query) deallocates every statement on the server.
bool deallocatesAll(std::string_view sql);

// PostgreSQL keys prepared statements by the first NAMEDATALEN-1 = 63 bytes of their name.
inline constexpr size_t kMaxNameBytes = 63;

// A named statement as a client prepared it. Immutable once made; shared by the client's map and
// the Rewriter's FIFO of the same client (one loop).
struct StatementDef {
  uint64_t id = 0;     // unique in the process (which Parse made it)
  std::string name;    // the client's name, as sent
  std::string query;   // query text
  std::string params;  // the Parse payload after the query's NUL: int16 count, int32 type oids
  size_t hash = 0;     // of (query, params): the key two statements share a server statement by
  SqlCommand command = SqlCommand::kOther;  // what executing it does (DEALLOCATE ALL, ...)
  // Its Parse failed or was skipped: it never existed, so undoing a later Close or DEALLOCATE
  // must not bring it back. Only the owning client's loop touches it.
  mutable bool dead = false;
  // The result type the client knows (resultFingerprint(); 0: not known yet): that of the server
  // statement its own Parse made, else the first one a Describe or Bind of it showed. PostgreSQL
  // refuses to run a statement whose result type changed since (0A000), and so does sluice when it
  // has to prepare the text again. Only the owning client's loop touches it.
  mutable uint64_t result = 0;
};

// A fingerprint of a statement's result type from the RowDescription ('T') or NoData ('n') that
// describes it: column count, names, type oids and typmods (what PostgreSQL compares before it
// answers "cached plan must not change result type"; the collation is not on the wire). Never 0.
// Table oids, column numbers and format codes are left out.
uint64_t resultFingerprint(std::string_view msg);
using StatementRef = std::shared_ptr<const StatementDef>;

// The statements one client has prepared, by the client's names. Owned by the ClientSession;
// not thread-safe. While a Rewriter is attached, change it only through the Rewriter.
class ClientStatements {
 public:
  const StatementDef* find(std::string_view name) const;
  size_t size() const { return by_name_.size(); }

  // Applies a simple-protocol query the server ran successfully (DEALLOCATE name, DEALLOCATE ALL,
  // DISCARD ALL; anything else is ignored) and returns what it found. For use outside a Rewriter
  // (the Rewriter does this itself, undoing it if the query fails).
  SqlInspection applySimpleQuery(std::string_view sql);
  void clear() { by_name_.clear(); }

 private:
  friend class Rewriter;
  struct NameHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  using Map = std::unordered_map<std::string, StatementRef, NameHash, std::equal_to<>>;
  static std::string_view key(std::string_view name) { return name.substr(0, kMaxNameBytes); }
  const StatementRef* findRef(std::string_view name) const;

  Map by_name_;
};

// The statements prepared on one server connection. Owned by the ServerConn (it lives and dies
// with the PostgreSQL session); not thread-safe. Statements are shared by key (query text +
// parameter types): two clients preparing the same text use one server statement.
class ServerStatements {
 public:
  static constexpr size_t kDefaultMaxPrepared = 200;  // PgBouncer's max_prepared_statements

  explicit ServerStatements(size_t max_prepared = kDefaultMaxPrepared);
  ServerStatements(const ServerStatements&) = delete;
  ServerStatements& operator=(const ServerStatements&) = delete;

  // On reload. Must be >= 1 (0 means the feature is off: do not create a Rewriter at all). A lower
  // cap is enforced by evicting on the next statement prepared here.
  void setMaxPrepared(size_t n) { max_prepared_ = n < 1 ? 1 : n; }
  size_t maxPrepared() const { return max_prepared_; }
  size_t size() const { return index_.size(); }
  // Nothing of sluice's may exist on this server session (not even untracked leftovers).
  bool empty() const { return index_.empty() && orphans_.empty() && set_aside_.empty(); }

  // The server-side name of `def`'s statement here, or "" if it is not prepared here.
  std::string serverName(const StatementDef& def) const;

  // sluice ran something on this server outside a Rewriter that deallocated every statement
  // (server_reset_query with DISCARD ALL or DEALLOCATE ALL, see deallocatesAll()).
  void forgetAll();

  // For SHOW SERVERS and metrics.
  struct Counters {
    uint64_t prepared = 0;  // Parse messages sent under a server-side name
    uint64_t reused = 0;    // client Parse answered from this server's cache
    uint64_t evicted = 0;   // statements closed because the cap was reached
  };
  const Counters& counters() const { return counters_; }

  static void appendName(std::string& out, uint64_t seq);  // "sluice_s<seq>"

 private:
  friend class Rewriter;
  struct Entry {
    std::string query;
    std::string params;
    size_t hash = 0;
    uint64_t seq = 0;        // server-side name is sluice_s<seq>; never reused on this connection
    uint64_t batch = 0;      // batch_ when the Parse was sent
    bool confirmed = false;  // its ParseComplete arrived
    uint64_t parsed_by = 0;  // StatementDef::id of the client Parse that made it (0: injected)
    // Its result type (resultFingerprint(); 0: not known yet), fixed when it was prepared:
    // PostgreSQL describes it as that or fails (0A000).
    uint64_t result = 0;
  };
  struct KeyView {
    std::string_view query;
    std::string_view params;
    size_t hash;
  };
  struct KeyHash {
    size_t operator()(const KeyView& k) const { return k.hash; }
  };
  struct KeyEq {
    bool operator()(const KeyView& a, const KeyView& b) const {
      return a.hash == b.hash && a.query == b.query && a.params == b.params;
    }
  };
  using Lru = std::list<Entry>;  // front: least recently used

  static KeyView keyOf(const StatementDef& d) { return {d.query, d.params, d.hash}; }
  Lru::iterator find(const StatementDef& def);          // lru_.end() if not prepared here
  Entry* entry(const StatementDef& def, uint64_t seq);  // also set aside; nullptr if gone
  void touch(Lru::iterator e);
  // The caller made room. `parsed_by`: StatementDef::id of the client Parse sent for it, or 0.
  Lru::iterator add(const StatementDef& def, uint64_t parsed_by);
  // A server name for a Parse that does not go into the map (closed once it succeeds).
  uint64_t reserveSeq() {
    ++counters_.prepared;
    return next_seq_++;
  }
  uint64_t evictOldest();  // returns the seq of the removed entry
  // Outcomes of a Parse sent under `seq` for `def`'s key.
  void onPrepared(const StatementDef& def, uint64_t seq);
  void onNotPrepared(const StatementDef& def, uint64_t seq);
  // The server no longer has `seq` usable (26000, 0A000): drop it; `close` if it may still exist.
  void forget(const StatementDef& def, uint64_t seq, bool close);
  // A DEALLOCATE ALL or DISCARD ALL was sent: empty the map into a set-aside list (whose Parse
  // outcomes still count), to be dropped if it runs or restored if it fails or is skipped.
  uint64_t setAsideAll();
  enum class SetAsideEnd : uint8_t {
    kRan,      // the server deallocated them: drop
    kFailed,   // it failed or was skipped: restore
    kUnknown,  // the Rewriter went away first: Close them all
  };
  void endSetAside(uint64_t id, SetAsideEnd how);
  Lru::iterator findSetAside(uint64_t seq, Lru** list);

  size_t max_prepared_;
  uint64_t next_seq_ = 1;
  uint64_t batch_ = 0;  // Syncs sent on this connection so far
  Lru lru_;
  std::unordered_map<KeyView, Lru::iterator, KeyHash, KeyEq> index_;  // keys point into lru_
  std::vector<uint64_t> orphans_;  // may exist on the server but untracked: Close them
  std::vector<std::pair<uint64_t, Lru>> set_aside_;  // by id; usually empty
  uint64_t next_set_aside_ = 1;
  Counters counters_;
};

// Rewrites one client's traffic to one server while the server is attached, and the server's
// answers back. Owned by the ClientSession from attach to release; not thread-safe. Holds
// references to both statement sets, which must outlive it.
//
// Client side, for every client message in order, once a server is attached:
//   1. need = clientBytesNeeded(type, length): that many bytes of the message, from its type byte
//      (the whole message, a prefix of a big Bind, or just the header);
//   2. onClientMessage(those bytes, to_server, to_client), both buffers empty;
//   3. kForward: relay the whole message unchanged. kReplace: send to_server instead of the
//      first `need` bytes, then relay the rest of the message (length+1-need bytes) unchanged.
//      kWait: consume nothing; send to_server now if it is not empty (what the decision waits
//      for, ending with a Flush); offer the same message again after the next server message.
//      In every case send to_client (answers sluice gives itself; only filled when nothing
//      else is pending, so it never overtakes a server answer) to the client.
// Server side, for every server message in order:
//   onServerMessage(msg, to_client) with the whole message, except that for types where
//   serverBodyNeeded(type) is false (DataRow, CopyData, FunctionCallResponse) the 5-byte header is
//   enough. kForward: relay the message unchanged. kReplace: send to_client instead (possibly
//   nothing). kReplace is never returned for a header-only message.
// Release the server only when idle() (and, as before, ReadyForQuery said 'I' and no batch is
// open: !unsynced()). A Rewriter destroyed while not idle() leaves the server in an unknown
// state: close that server.
class Rewriter {
 public:
  enum class Action : uint8_t {
    kForward,  // pass the original bytes through
    kReplace,  // use the replacement instead
    // Client side only: not consumed; send to_server (if any) first. How to rewrite it depends
    // on a server answer still to come: how an earlier batch in flight ends (e.g. a Close the
    // server may skip), or the result type of a statement prepared again for this Bind or
    // Describe. Offer it again after the next server message. Rare: pipelined batches touching
    // the same statement name, and the first use of a statement on a server that lacks it.
    kWait,
  };

  // `tx_status`: the server's transaction status when attached (from its last ReadyForQuery).
  Rewriter(ClientStatements& client, ServerStatements& server, char tx_status = 'I');
  ~Rewriter();  // forgets server statements whose Parse is still unanswered (then close them)
  Rewriter(const Rewriter&) = delete;
  Rewriter& operator=(const Rewriter&) = delete;

  // How many bytes of a client message (counted from its type byte) onClientMessage needs:
  // the whole message for Parse, Describe, Close, Execute, Sync, Flush and Query up to 64 KiB;
  // at most 64 KiB of a Bind (enough for its two names); the header only for the rest.
  static size_t clientBytesNeeded(char type, uint32_t length);
  // `head`: the first clientBytesNeeded() bytes of one client message. Appends to `to_server`
  // (kReplace) and to `to_client` (answers sluice gives itself, when nothing is pending).
  Action onClientMessage(std::string_view head, std::string& to_server, std::string& to_client);

  // False for the types whose body the Rewriter never needs (D, d, V): the relay may stream them.
  static bool serverBodyNeeded(char type) { return !(type == 'D' || type == 'd' || type == 'V'); }
  // In place of a client's Parse (which the caller then drops, kReplace): a Parse PostgreSQL
  // refuses, so that the server skips the rest of the batch up to the Sync exactly as after a
  // failed Parse of its own, and the client gets `error` (a whole ErrorResponse message) where
  // its ParseComplete would have been. The statement is not registered. kForward while the
  // server skips messages anyway: it ignores the client's Parse then, which may be relayed.
  Action refuseParse(std::string error, std::string& to_server);

  // `msg`: one server message (whole, or only its header if !serverBodyNeeded(type)).
  // Appends the replacement to `to_client` when returning kReplace.
  Action onServerMessage(std::string_view msg, std::string& to_client);

  // Nothing is pending: every message sent has been answered and the server is not skipping
  // messages until a Sync.
  bool idle() const { return size() == 0 && !skipping_; }
  // ReadyForQuery messages the server still owes (one per Sync, Query, FunctionCall it will
  // answer; a Query sent while the server skips to the next Sync is ignored by PostgreSQL).
  int owedReadyForQuery() const { return owed_ready_; }
  // An extended-protocol message was sent since the last Sync.
  bool unsynced() const { return unsynced_; }
  // After an error in an extended-protocol message the server ignores everything up to the next
  // Sync; true while that Sync has not been sent yet.
  bool skipping() const { return skipping_; }
  // The status of the last ReadyForQuery (or the one given at attach).
  char txStatus() const { return tx_status_; }

 private:
  enum class Kind : uint8_t {
    // Answered by the server; the client sees the answer.
    kParse,              // '1'
    kBind,               // '2'
    kDescribeStatement,  // 't' then 'T' or 'n'
    kDescribePortal,     // 'T' or 'n'
    kExecute,            // rows, then 'C', 'I' or 's'
    kClose,              // '3'
    kSync,               // 'Z'
    kQuery,              // everything up to 'Z'
    kFunctionCall,       // 'V' then 'Z'
    kDuplicateParse,     // a Parse of an existing name, sent under that statement's server name
    kDeallocate,         // an empty Query for DEALLOCATE name: its 'I' -> CommandComplete
    // Answered by the server; hidden from the client.
    kInjectedParse,   // '1' swallowed
    kHiddenClose,     // '3' swallowed (eviction or cleanup)
    kHiddenDescribe,  // 't' then 'T' or 'n' swallowed: the result type of a statement prepared
    // A Parse of a syntax error sent instead of the client's Bind or Describe of a statement whose
    // result type changed, so that PostgreSQL skips to the Sync as after an error of its own: its
    // error becomes 0A000 "cached plan must not change result type". Or instead of a client's
    // Parse that sluice refuses (refuseParse()): its error becomes Pending::error.
    kRefusal,
    // Answered by sluice: no server message; emitted when it reaches the head of the FIFO.
    kParseComplete,  // "1\0\0\0\4"
    kCloseComplete,  // "3\0\0\0\4"
  };
  // Client-view change made when the message was sent, undone if it fails or is skipped.
  struct Undo {
    enum class Op : uint8_t { kNone, kRegister, kErase, kClearAll } op = Op::kNone;
    StatementRef def;           // kRegister: added; kErase: removed
    ClientStatements::Map old;  // kClearAll: the client's statements before
    uint64_t set_aside = 0;     // kClearAll: its ServerStatements::setAsideAll() id
    uint64_t epoch = 0;         // view_epoch_ when sent
    bool real_parse = false;    // kRegister by a Parse the server answers (not from the cache)
    int commit_after = 0;       // kQuery: CommandCompletes after which the change has happened
    int completes = 0;          // kQuery: CommandCompletes seen
    bool failed = false;        // an ErrorResponse arrived for it
    std::string name;           // kDuplicateParse: the name for the 42P05 message
  };
  struct Pending {
    uint64_t id;  // position in the stream of pending entries
    Kind kind;
    uint64_t seq = 0;            // server statement created, used or closed (0: none)
    StatementRef def;            // the client statement it concerns
    std::unique_ptr<Undo> undo;  // only for messages that change the client's view
    bool own_parse = false;      // kHiddenDescribe: of the Parse of `def` itself (its result type)
    std::unique_ptr<std::string> error;  // kRefusal by refuseParse(): the ErrorResponse to send
  };
  // A Bind or Describe held (kWait) until the server tells the result type of the server
  // statement it will use. At most one: the held message stops the client's stream.
  struct Check {
    uint64_t describe = 0;  // id of the pending Describe whose answer decides (0: none held)
    uint64_t seq = 0;       // the server statement the held message will use
    uint64_t result = 0;    // its result type, once the answer came
    uint64_t def = 0;       // StatementDef::id of the statement the held message names
  };

  // FIFO of Pending in a vector that keeps its capacity (no allocation in steady state).
  size_t size() const { return fifo_.size() - head_; }
  Pending& front() { return fifo_[head_]; }
  Pending& push(Kind kind, uint64_t seq = 0, StatementRef def = nullptr);
  void popFront();
  static bool synthesized(Kind k) { return k == Kind::kParseComplete || k == Kind::kCloseComplete; }
  static bool owesReady(Kind k) {
    return k == Kind::kSync || k == Kind::kQuery || k == Kind::kFunctionCall ||
           k == Kind::kDeallocate;
  }
  void emitSynthesized(std::string& to_client);

  // Client side.
  void flushOrphans(std::string& to_server);
  uint64_t ensurePrepared(const StatementRef& def, std::string& to_server);  // returns seq
  void makeRoom(std::string& to_server);
  void appendHiddenDescribe(std::string& to_server, uint64_t seq, const StatementRef& def,
                            bool own_parse);
  // Before a Bind or Describe of `def` on `seq`: decides whether the client may use it, or what to
  // wait for (kWait), or that it must be refused (sets `refuse`). Updates `seq`.
  bool readyToUse(const StatementRef& def, uint64_t& seq, std::string& to_server);
  Action checkResultType(const StatementRef& def, uint64_t& seq, bool& refuse,
                         std::string& to_server);
  void learnResult(Pending& p, uint64_t result);  // a Describe of p.seq answered `result`
  Action passThrough(std::string_view msg, Kind kind, std::string& to_server);
  Action onParse(std::string_view msg, bool whole, std::string& to_server, std::string& to_client);
  Action onBind(std::string_view msg, std::string& to_server);
  Action onDescribe(std::string_view msg, bool whole, std::string& to_server);
  Action onExecute(std::string_view msg, std::string& to_server);
  Action onClose(std::string_view msg, bool whole, std::string& to_server, std::string& to_client);
  Action onQuery(std::string_view msg, bool whole, std::string& to_server);
  std::unique_ptr<Undo> clearAll();  // DEALLOCATE ALL / DISCARD ALL sent: forget everything
  void setPortalCommand(std::string_view portal, SqlCommand c);

  // Server side.
  Action onError(std::string_view msg, std::string& to_client);
  void undo(Pending& p);    // revert its client-view change
  void failed(Pending& p);  // it was answered with an error or skipped: undo its effects
  void commit(Pending& p) { releaseUndo(p); }
  void attachUndo(Pending& p, std::unique_ptr<Undo> u);
  void releaseUndo(Pending& p);
  Pending& byId(uint64_t id) { return fifo_[head_ + (id - fifo_[head_].id)]; }
  enum class Use : uint8_t { kBind, kClose, kOther };
  bool mustWait(std::string_view head);
  bool conflicts(std::string_view name, Use use);
  bool anyEarlierChange();

  ClientStatements& client_;
  ServerStatements& server_;
  std::vector<Pending> fifo_;
  Check check_;
  // View changes still pending (ids of entries with an Undo), and the epoch: Syncs, Queries and
  // FunctionCalls sent. A change from an earlier epoch may still be skipped or fail.
  std::vector<uint64_t> changes_;
  uint64_t view_epoch_ = 0;
  uint64_t next_id_ = 0;
  size_t head_ = 0;
  int owed_ready_ = 0;
  bool skipping_ = false;
  bool unsynced_ = false;
  char tx_status_;
  SqlCommand unnamed_command_ = SqlCommand::kOther;  // what the unnamed statement runs
  // Portals bound to a statement that deallocates (rare; usually empty).
  std::vector<std::pair<std::string, SqlCommand>> portal_commands_;
};

}  // namespace sluice::protocol
