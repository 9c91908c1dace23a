#include "protocol/prepared_statements.h"

#include <algorithm>
#include <atomic>
#include <charconv>
#include <cstring>

#include "protocol/sql_lexer.h"
#include "protocol/wire.h"

namespace sluice::protocol {

namespace {

// SQLSTATEs this file reads or sends (PostgreSQL's Appendix A).
constexpr std::string_view kUndefinedPstatement = "26000";  // prepared statement ... does not exist
constexpr std::string_view kCachedPlanChanged = "0A000";  // cached plan must not change result type
constexpr const char* kDuplicatePstatement = "42P05";
constexpr const char* kInFailedTransaction = "25P02";

// Messages up to this size are inspected whole; a Bind's two names are looked for in this prefix.
constexpr size_t kMaxInspected = size_t{64} * 1024;

constexpr std::string_view kParseComplete("1\0\0\0\4", 5);
constexpr std::string_view kCloseComplete("3\0\0\0\4", 5);

bool readCString(std::string_view s, size_t& pos, std::string_view& out) {
  size_t nul = s.find('\0', pos);
  if (nul == std::string_view::npos) return false;
  out = s.substr(pos, nul - pos);
  pos = nul + 1;
  return true;
}

void appendHeader(std::string& out, char type, size_t payload) {
  out.push_back(type);
  uint32_t be = __builtin_bswap32(uint32_t(payload + 4));
  out.append(reinterpret_cast<const char*>(&be), 4);
}

// "sluice_s<seq>" into a stack buffer: no allocation on the hot path.
struct ServerName {
  char buf[32];
  size_t len;
  explicit ServerName(uint64_t seq) {
    std::memcpy(buf, "sluice_s", 8);
    auto r = std::to_chars(buf + 8, buf + sizeof buf, seq);
    len = size_t(r.ptr - buf);
  }
  std::string_view view() const { return {buf, len}; }
};

void appendParse(std::string& out, uint64_t seq, const StatementDef& d) {
  ServerName n(seq);
  appendHeader(out, 'P', n.len + 1 + d.query.size() + 1 + d.params.size());
  out.append(n.view());
  out.push_back('\0');
  out.append(d.query);
  out.push_back('\0');
  out.append(d.params);
}

void appendDescribeStatement(std::string& out, uint64_t seq) {
  ServerName n(seq);
  appendHeader(out, 'D', 1 + n.len + 1);
  out.push_back('S');
  out.append(n.view());
  out.push_back('\0');
}

void appendFlush(std::string& out) { appendHeader(out, 'H', 0); }

// A Parse that PostgreSQL refuses whatever its state: a syntax error is found before the name, the
// transaction or the relations are looked at. Named, so that the unnamed statement stays. `why`
// (starting "sluice:") is what PostgreSQL's log shows as the failed statement.
void appendRefusal(std::string& out, std::string_view why) {
  constexpr std::string_view kName = "sluice_refused";
  appendHeader(out, 'P', kName.size() + 1 + why.size() + 1 + 2);
  out.append(kName);
  out.push_back('\0');
  out.append(why);
  out.push_back('\0');
  out.append(2, '\0');  // no parameter types
}

// PostgreSQL's own error, with the routine that drivers recognize it by (asyncpg then prepares
// again and retries).
void appendResultTypeChanged(std::string& out) {
  protocol::Writer w(out);
  w.begin('E');
  for (auto [field, value] : {std::pair<char, std::string_view>{'S', "ERROR"},
                              {'V', "ERROR"},
                              {'C', kCachedPlanChanged},
                              {'M', "cached plan must not change result type"},
                              {'F', "plancache.c"},
                              {'R', "RevalidateCachedQuery"}}) {
    w.byte(uint8_t(field));
    w.cstring(value);
  }
  w.byte(0);
  w.end();
}

void appendCloseStatement(std::string& out, uint64_t seq) {
  ServerName n(seq);
  appendHeader(out, 'C', 1 + n.len + 1);
  out.push_back('S');
  out.append(n.view());
  out.push_back('\0');
}

std::atomic<uint64_t> g_next_def_id{1};

size_t keyHash(std::string_view query, std::string_view params) {
  size_t h = std::hash<std::string_view>{}(query);
  return h ^ (std::hash<std::string_view>{}(params) + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2));
}

// ---- DEALLOCATE and DISCARD ALL in a query string (protocol/sql_lexer.h splits it) ----

SqlInspection classify(const std::vector<SqlToken>& t) {
  SqlInspection r;
  const int count = int(t.size());
  auto isWord = [&](int k, std::string_view w) { return sqlWordIs(t[size_t(k)], w); };
  auto isName = [&](int k) {
    return t[size_t(k)].type == SqlToken::kWord || t[size_t(k)].type == SqlToken::kQuotedIdent;
  };
  if (isWord(0, "discard") && count == 2 && isWord(1, "all")) {
    r.command = SqlCommand::kDiscardAll;
  } else if (isWord(0, "deallocate") && (count == 2 || count == 3)) {
    int k = 1;
    if (count == 3) {
      if (!isWord(1, "prepare")) return r;
      k = 2;
    }
    if (isWord(k, "all")) {
      r.command = SqlCommand::kDeallocateAll;
    } else if (isName(k)) {
      r.command = SqlCommand::kDeallocate;
      r.name = sqlName(t[size_t(k)]);
    }
  }
  return r;
}

// Cheap test before lexing: both commands start with "de" or "di". memchr finds the few
// candidate letters without looking at every byte in a loop of our own (ordinary queries are
// checked on every transaction).
bool hasPair(std::string_view sql, char d) {
  const char* p = sql.data();
  const char* end = p + sql.size();
  while (p + 1 < end) {
    const void* hit = std::memchr(p, d, size_t(end - p - 1));
    if (hit == nullptr) return false;
    p = static_cast<const char*>(hit);
    char n = char(p[1] | 0x20);
    if (n == 'e' || n == 'i') return true;
    ++p;
  }
  return false;
}

// The fields of an ErrorResponse payload we decide on.
struct ErrorSummary {
  std::string_view sqlstate;
  bool fatal = false;  // FATAL or PANIC: the connection ends
};
ErrorSummary summarizeError(std::string_view msg) {
  ErrorSummary e;
  size_t pos = protocol::kHeaderSize;
  while (pos < msg.size() && msg[pos] != '\0') {
    char field = msg[pos++];
    std::string_view v;
    if (!readCString(msg, pos, v)) break;
    if (field == 'C') e.sqlstate = v;
    if (field == 'V' || (field == 'S' && !e.fatal)) e.fatal = (v == "FATAL" || v == "PANIC");
  }
  return e;
}

std::string quotedServerName(uint64_t seq) {
  return "\"" + std::string(ServerName(seq).view()) + "\"";
}

// Re-encodes an ErrorResponse with `from` replaced by `to` in its message field. Unless `always`,
// does nothing and returns false when the message does not contain `from`.
bool appendErrorRenamed(std::string& out, std::string_view msg, std::string_view from,
                        std::string_view to, bool always = false) {
  if (!always && msg.find(from) == std::string_view::npos) return false;
  protocol::Writer w(out);
  w.begin('E');
  size_t pos = protocol::kHeaderSize;
  while (pos < msg.size() && msg[pos] != '\0') {
    char field = msg[pos++];
    std::string_view v;
    if (!readCString(msg, pos, v)) break;
    w.byte(uint8_t(field));
    if (field != 'M') {
      w.cstring(v);
      continue;
    }
    std::string m(v);
    for (size_t at = m.find(from); at != std::string::npos; at = m.find(from, at + to.size())) {
      m.replace(at, from.size(), to);
    }
    w.cstring(m);
  }
  w.byte(0);
  w.end();
  return true;
}

void appendAbortedError(std::string& out) {
  protocol::ErrorInfo e;
  e.sqlstate = kInFailedTransaction;
  e.message = "current transaction is aborted, commands ignored until end of transaction block";
  protocol::appendError(out, e);
}

void appendDuplicateError(std::string& out, std::string_view name) {
  protocol::ErrorInfo e;
  e.sqlstate = kDuplicatePstatement;
  e.message = "prepared statement \"" + std::string(name) + "\" already exists";
  protocol::appendError(out, e);
}

}  // namespace

// ---- result types ----

uint64_t resultFingerprint(std::string_view msg) {
  uint64_t h = 1469598103934665603ULL;  // FNV-1a
  auto mix = [&h](std::string_view bytes) {
    for (unsigned char c : bytes) {
      h ^= c;
      h *= 1099511628211ULL;
    }
  };
  mix(msg.substr(0, 1));
  if (msg.size() >= protocol::kHeaderSize + 2 && msg[0] == 'T') {
    size_t pos = protocol::kHeaderSize;
    mix(msg.substr(pos, 2));  // column count
    pos += 2;
    std::string_view name;
    while (pos < msg.size() && readCString(msg, pos, name)) {
      // name, table oid (4), column number (2), type oid (4), size (2), typmod (4), format (2)
      if (pos + 18 > msg.size()) break;
      mix(name);
      mix(std::string_view("\0", 1));
      mix(msg.substr(pos + 6, 4));
      mix(msg.substr(pos + 12, 4));
      pos += 18;
    }
  }
  return h == 0 ? 1 : h;
}

// ---- SQL inspection ----

bool mayDeallocate(std::string_view sql) { return hasPair(sql, 'd') || hasPair(sql, 'D'); }

SqlInspection inspectSql(std::string_view sql) {
  SqlInspection result;
  if (!mayDeallocate(sql)) return result;
  int statements = 0;
  SqlInspection first_all;
  bool found_all = false;
  forEachSqlStatement(sql, [&](const std::vector<SqlToken>& t) {
    SqlInspection c = classify(t);
    if (statements == 0) result = c;
    if (!found_all && c.command == SqlCommand::kDeallocateAll) {
      found_all = true;
      first_all = c;
      first_all.index = statements;
    }
    ++statements;
    return false;  // every statement is counted
  });
  if (statements == 1) return result;
  return found_all ? first_all : SqlInspection{};
}

bool deallocatesAll(std::string_view sql) {
  bool all = false;
  if (!mayDeallocate(sql)) return false;
  forEachSqlStatement(sql, [&](const std::vector<SqlToken>& t) {
    SqlCommand c = classify(t).command;
    all = c == SqlCommand::kDeallocateAll || c == SqlCommand::kDiscardAll;
    return all;
  });
  return all;
}

// ---- ClientStatements ----

const StatementRef* ClientStatements::findRef(std::string_view name) const {
  auto it = by_name_.find(key(name));
  return it == by_name_.end() ? nullptr : &it->second;
}

const StatementDef* ClientStatements::find(std::string_view name) const {
  const StatementRef* r = findRef(name);
  return r ? r->get() : nullptr;
}

SqlInspection ClientStatements::applySimpleQuery(std::string_view sql) {
  SqlInspection in = inspectSql(sql);
  switch (in.command) {
    case SqlCommand::kDeallocate: {
      auto it = by_name_.find(key(in.name));
      if (it != by_name_.end()) by_name_.erase(it);
      break;
    }
    case SqlCommand::kDeallocateAll:
    case SqlCommand::kDiscardAll:
      by_name_.clear();
      break;
    case SqlCommand::kOther:
      break;
  }
  return in;
}

// ---- ServerStatements ----

ServerStatements::ServerStatements(size_t max_prepared)
    : max_prepared_(max_prepared < 1 ? 1 : max_prepared) {}

void ServerStatements::appendName(std::string& out, uint64_t seq) {
  out.append(ServerName(seq).view());
}

ServerStatements::Lru::iterator ServerStatements::find(const StatementDef& def) {
  auto it = index_.find(keyOf(def));
  return it == index_.end() ? lru_.end() : it->second;
}

ServerStatements::Entry* ServerStatements::entry(const StatementDef& def, uint64_t seq) {
  Lru::iterator e = find(def);
  if (e != lru_.end() && e->seq == seq) return &*e;
  Lru* list;
  e = findSetAside(seq, &list);
  return list ? &*e : nullptr;
}

std::string ServerStatements::serverName(const StatementDef& def) const {
  auto it = index_.find(keyOf(def));
  if (it == index_.end()) return {};
  return std::string(ServerName(it->second->seq).view());
}

void ServerStatements::touch(Lru::iterator e) { lru_.splice(lru_.end(), lru_, e); }

ServerStatements::Lru::iterator ServerStatements::add(const StatementDef& def, uint64_t parsed_by) {
  lru_.push_back(Entry{def.query, def.params, def.hash, next_seq_++, batch_, false, parsed_by});
  Lru::iterator e = std::prev(lru_.end());
  index_.emplace(KeyView{e->query, e->params, e->hash}, e);
  ++counters_.prepared;
  return e;
}

uint64_t ServerStatements::evictOldest() {
  Entry& e = lru_.front();
  uint64_t seq = e.seq;
  index_.erase(KeyView{e.query, e.params, e.hash});
  lru_.pop_front();
  ++counters_.evicted;
  return seq;
}

ServerStatements::Lru::iterator ServerStatements::findSetAside(uint64_t seq, Lru** list) {
  for (auto& [id, taken] : set_aside_) {
    for (auto it = taken.begin(); it != taken.end(); ++it) {
      if (it->seq == seq) {
        *list = &taken;
        return it;
      }
    }
  }
  *list = nullptr;
  return {};
}

void ServerStatements::onPrepared(const StatementDef& def, uint64_t seq) {
  Lru::iterator e = find(def);
  if (e != lru_.end() && e->seq == seq) {
    e->confirmed = true;
    return;
  }
  Lru* list;
  Lru::iterator it = findSetAside(seq, &list);
  if (list) {
    it->confirmed = true;  // whether it stays depends on the DEALLOCATE ALL it waits on
  } else {
    orphans_.push_back(seq);  // replaced or forgotten meanwhile, but it exists: close it
  }
}

void ServerStatements::onNotPrepared(const StatementDef& def, uint64_t seq) {
  forget(def, seq, false);
}

void ServerStatements::forget(const StatementDef& def, uint64_t seq, bool close) {
  auto it = index_.find(keyOf(def));
  if (it != index_.end() && it->second->seq == seq) {
    Lru::iterator node = it->second;
    index_.erase(it);
    lru_.erase(node);
  } else {
    Lru* list;
    Lru::iterator node = findSetAside(seq, &list);
    if (list) list->erase(node);
  }
  if (close) orphans_.push_back(seq);
}

uint64_t ServerStatements::setAsideAll() {
  uint64_t id = next_set_aside_++;
  set_aside_.emplace_back(id, Lru());
  set_aside_.back().second.splice(set_aside_.back().second.end(), lru_);
  index_.clear();
  return id;
}

void ServerStatements::endSetAside(uint64_t id, SetAsideEnd how) {
  auto pos = std::find_if(set_aside_.begin(), set_aside_.end(),
                          [&](const auto& s) { return s.first == id; });
  if (pos == set_aside_.end()) return;
  Lru taken = std::move(pos->second);
  set_aside_.erase(pos);
  switch (how) {
    case SetAsideEnd::kRan:
      return;  // the server deallocated them
    case SetAsideEnd::kUnknown:
      for (const Entry& e : taken) orphans_.push_back(e.seq);  // Close is harmless either way
      return;
    case SetAsideEnd::kFailed:
      break;
  }
  // They are older than anything prepared since: back at the cold end, unless their key was
  // prepared again meanwhile (then the older copy is closed). The cap applies on the next add.
  while (!taken.empty()) {
    Lru::iterator e = std::prev(taken.end());
    if (index_.count(KeyView{e->query, e->params, e->hash})) {
      orphans_.push_back(e->seq);
      taken.erase(e);
      continue;
    }
    lru_.splice(lru_.begin(), taken, e);
    index_.emplace(KeyView{e->query, e->params, e->hash}, lru_.begin());
  }
}

void ServerStatements::forgetAll() {
  index_.clear();
  lru_.clear();
  set_aside_.clear();
  orphans_.clear();
}

// ---- Rewriter ----

Rewriter::Rewriter(ClientStatements& client, ServerStatements& server, char tx_status)
    : client_(client), server_(server), tx_status_(tx_status) {
  fifo_.reserve(16);
}

Rewriter::~Rewriter() {
  // Detached with answers outstanding (the relay should then close the server): whatever Parse is
  // unanswered may or may not have run.
  for (size_t i = head_; i < fifo_.size(); ++i) {
    Pending& p = fifo_[i];
    if ((p.kind == Kind::kParse || p.kind == Kind::kInjectedParse) && p.seq != 0) {
      server_.forget(*p.def, p.seq, true);
    } else if (p.kind == Kind::kHiddenClose) {
      server_.orphans_.push_back(p.seq);
    }
    if (p.undo && p.undo->set_aside != 0) {
      server_.endSetAside(p.undo->set_aside, ServerStatements::SetAsideEnd::kUnknown);
    }
  }
}

size_t Rewriter::clientBytesNeeded(char type, uint32_t length) {
  size_t total = size_t(length) + 1;
  switch (type) {
    case 'P':
    case 'D':
    case 'C':
    case 'E':
    case 'S':
    case 'H':
      return total;
    case 'B':
      return std::min(total, kMaxInspected);
    case 'Q':
      return total <= kMaxInspected ? total : protocol::kHeaderSize;
    default:
      return protocol::kHeaderSize;
  }
}

Rewriter::Pending& Rewriter::push(Kind kind, uint64_t seq, StatementRef def) {
  fifo_.push_back(Pending{next_id_++, kind, seq, std::move(def), nullptr, false, nullptr});
  if (owesReady(kind)) ++owed_ready_;
  return fifo_.back();
}

void Rewriter::popFront() {
  Pending& p = fifo_[head_];
  if (owesReady(p.kind)) --owed_ready_;
  p.def.reset();
  p.error.reset();
  releaseUndo(p);
  ++head_;
  if (head_ == fifo_.size()) {
    fifo_.clear();
    head_ = 0;
  } else if (head_ >= 1024 && head_ * 2 >= fifo_.size()) {
    fifo_.erase(fifo_.begin(), fifo_.begin() + ptrdiff_t(head_));
    head_ = 0;
  }
}

void Rewriter::attachUndo(Pending& p, std::unique_ptr<Undo> u) {
  u->epoch = view_epoch_;
  if (u->op != Undo::Op::kNone) changes_.push_back(p.id);
  p.undo = std::move(u);
}

void Rewriter::releaseUndo(Pending& p) {
  if (!p.undo) return;
  // Committed: the server deallocated what was set aside (after undo() this finds nothing).
  if (p.undo->set_aside != 0) {
    server_.endSetAside(p.undo->set_aside, ServerStatements::SetAsideEnd::kRan);
  }
  if (p.undo->op != Undo::Op::kNone) {
    auto it = std::find(changes_.begin(), changes_.end(), p.id);
    if (it != changes_.end()) changes_.erase(it);
  }
  p.undo.reset();
}

// A change made in the current epoch is safe to build on: if it is skipped, so is everything
// after it up to the Sync. One from an earlier epoch is not, except that a Bind or Describe may
// rely on the same name's own Parse (if that fails, the server answers 26000 and the client hears
// that its statement does not exist, as from PostgreSQL), and a Close is answered the same
// whether a Parse before it worked or not.
bool Rewriter::conflicts(std::string_view name, Use use) {
  std::string_view key = ClientStatements::key(name);
  for (uint64_t id : changes_) {
    const Undo& u = *byId(id).undo;
    if (u.epoch == view_epoch_) continue;
    if (u.op == Undo::Op::kClearAll) return true;
    if (ClientStatements::key(u.def->name) != key) continue;
    if (u.op == Undo::Op::kRegister && use == Use::kClose) continue;
    if (u.op == Undo::Op::kRegister && u.real_parse && use == Use::kBind) {
      // Only while the statement that Parse makes is still the one the Bind will name (the cap
      // or a DEALLOCATE ALL may have dropped it, and a Parse injected instead would succeed).
      auto e = server_.find(*u.def);
      if (e != server_.lru_.end() && e->parsed_by == u.def->id) continue;
    }
    return true;
  }
  return false;
}

bool Rewriter::anyEarlierChange() {
  for (uint64_t id : changes_) {
    if (byId(id).undo->epoch != view_epoch_) return true;
  }
  return false;
}

bool Rewriter::mustWait(std::string_view head) {
  if (changes_.empty() || skipping_) return false;
  size_t pos = protocol::kHeaderSize;
  std::string_view name;
  switch (head[0]) {
    case 'P':
      return readCString(head, pos, name) && !name.empty() && conflicts(name, Use::kOther);
    case 'B':
      return readCString(head, pos, name) && readCString(head, pos, name) && !name.empty() &&
             conflicts(name, Use::kBind);
    case 'D':
    case 'C':
      if (head.size() <= pos || head[pos] != 'S') return false;
      ++pos;
      return readCString(head, pos, name) && !name.empty() &&
             conflicts(name, head[0] == 'D' ? Use::kBind : Use::kClose);
    case 'E':
      if (portal_commands_.empty() || !readCString(head, pos, name)) return false;
      for (const auto& pc : portal_commands_) {
        if (pc.first == name) return anyEarlierChange();
      }
      return false;
    case 'Q': {
      if (head.size() != size_t(protocol::readU32(head.data() + 1)) + 1) return false;
      SqlInspection in = inspectSql(head.substr(pos, head.size() - pos - 1));
      switch (in.command) {
        case SqlCommand::kDeallocate:
          return conflicts(in.name, Use::kOther);
        case SqlCommand::kDeallocateAll:
        case SqlCommand::kDiscardAll:
          return anyEarlierChange();
        case SqlCommand::kOther:
          return false;
      }
      return false;
    }
    default:
      return false;
  }
}

void Rewriter::emitSynthesized(std::string& to_client) {
  while (size() > 0 && synthesized(front().kind)) {
    to_client.append(front().kind == Kind::kParseComplete ? kParseComplete : kCloseComplete);
    commit(front());
    popFront();
  }
}

void Rewriter::flushOrphans(std::string& to_server) {
  if (server_.orphans_.empty()) return;
  for (uint64_t seq : server_.orphans_) {
    appendCloseStatement(to_server, seq);
    push(Kind::kHiddenClose, seq);
  }
  server_.orphans_.clear();
}

void Rewriter::makeRoom(std::string& to_server) {
  while (server_.size() >= server_.max_prepared_) {
    uint64_t seq = server_.evictOldest();
    appendCloseStatement(to_server, seq);
    push(Kind::kHiddenClose, seq);
  }
}

uint64_t Rewriter::ensurePrepared(const StatementRef& def, std::string& to_server) {
  auto e = server_.find(*def);
  // A statement whose Parse is still unanswered may be relied on within the same batch (if that
  // Parse fails or is skipped, PostgreSQL skips the rest of the batch too), and by the client
  // statement whose own Parse it is (if that fails, the statement does not exist for PostgreSQL
  // either, and the server's 26000 says so). Otherwise a later batch prepares it again under a
  // new name, because the first Parse may fail for a reason that no longer holds then (an
  // aborted transaction since rolled back); the older copy is closed once its ParseComplete
  // arrives.
  if (e != server_.lru_.end() &&
      (e->confirmed || e->batch == server_.batch_ || e->parsed_by == def->id)) {
    server_.touch(e);
    return e->seq;
  }
  if (e != server_.lru_.end()) server_.forget(*def, e->seq, false);
  makeRoom(to_server);
  e = server_.add(*def, 0);
  appendParse(to_server, e->seq, *def);
  uint64_t seq = e->seq;
  push(Kind::kInjectedParse, seq, def);
  appendHiddenDescribe(to_server, seq, def, false);
  return seq;
}

void Rewriter::appendHiddenDescribe(std::string& to_server, uint64_t seq, const StatementRef& def,
                                    bool own_parse) {
  appendDescribeStatement(to_server, seq);
  push(Kind::kHiddenDescribe, seq, def).own_parse = own_parse;
}

// PostgreSQL fixes a statement's result type when it is prepared and refuses to run it once the
// type has changed (0A000). The client's statement (def->result) and the server statement it is
// about to use may have been prepared at different times, with DDL in between: compare the two.
// When the server statement's type is still on its way, wait for it; when it differs, either one
// may be the stale one, so the text is prepared afresh, which tells the type it has now.
Rewriter::Action Rewriter::checkResultType(const StatementRef& def, uint64_t& seq, bool& refuse,
                                           std::string& to_server) {
  refuse = false;
  if (check_.describe != 0) {
    // The held message again: decided once the answer came.
    if (check_.result == 0) return Action::kWait;
    seq = check_.seq;
    refuse = check_.result != def->result;
    check_ = Check{};
    return Action::kForward;
  }
  if (def->result == 0) return Action::kForward;  // nothing to compare with: it learns the type
  ServerStatements::Entry* e = server_.entry(*def, seq);
  if (e == nullptr || e->parsed_by == def->id || e->result == def->result) {
    return Action::kForward;
  }
  uint64_t describe = 0;
  if (e->result == 0) {
    for (size_t i = head_; i < fifo_.size() && describe == 0; ++i) {
      const Pending& p = fifo_[i];
      if ((p.kind == Kind::kHiddenDescribe || p.kind == Kind::kDescribeStatement) && p.seq == seq) {
        describe = p.id;
      }
    }
  }
  if (describe == 0) {
    server_.forget(*def, seq, e->confirmed);  // if unconfirmed, closed when its answer comes
    flushOrphans(to_server);
    makeRoom(to_server);
    seq = server_.add(*def, 0)->seq;
    appendParse(to_server, seq, *def);
    push(Kind::kInjectedParse, seq, def);
    appendHiddenDescribe(to_server, seq, def, false);
    describe = fifo_.back().id;
  }
  // PostgreSQL holds its answers until a Flush or Sync; the client's Sync is behind this message.
  appendFlush(to_server);
  check_ = Check{describe, seq, 0, def->id};
  return Action::kWait;
}

void Rewriter::learnResult(Pending& p, uint64_t result) {
  if (p.seq != 0) {
    ServerStatements::Entry* e = server_.entry(*p.def, p.seq);
    if (e && e->result == 0) e->result = result;
  }
  if (p.def->result == 0 && (p.kind != Kind::kHiddenDescribe || p.own_parse)) {
    p.def->result = result;
  }
  if (check_.describe == p.id) check_.result = result;
}

std::unique_ptr<Rewriter::Undo> Rewriter::clearAll() {
  auto u = std::make_unique<Undo>();
  u->op = Undo::Op::kClearAll;
  u->old.swap(client_.by_name_);
  u->set_aside = server_.setAsideAll();
  return u;
}

void Rewriter::setPortalCommand(std::string_view portal, SqlCommand c) {
  bool special = c == SqlCommand::kDeallocateAll || c == SqlCommand::kDiscardAll;
  if (!special && portal_commands_.empty()) return;
  for (auto it = portal_commands_.begin(); it != portal_commands_.end(); ++it) {
    if (it->first == portal) {
      if (special) {
        it->second = c;
      } else {
        portal_commands_.erase(it);
      }
      return;
    }
  }
  if (special) portal_commands_.emplace_back(std::string(portal), c);
}

Rewriter::Action Rewriter::onClientMessage(std::string_view head, std::string& to_server,
                                           std::string& to_client) {
  if (head.size() < protocol::kHeaderSize) return Action::kForward;
  const char type = head[0];
  if (mustWait(head)) return Action::kWait;
  const bool was_skipping = skipping_;
  if (skipping_) {
    // PostgreSQL ignores everything up to the next Sync: no answer, no effect.
    if (type != 'S') return Action::kForward;
    skipping_ = false;
  }
  const bool whole = head.size() == size_t(protocol::readU32(head.data() + 1)) + 1;
  switch (type) {
    case 'P':
      unsynced_ = true;
      return onParse(head, whole, to_server, to_client);
    case 'B':
      unsynced_ = true;
      return onBind(head, to_server);
    case 'D':
      unsynced_ = true;
      return onDescribe(head, whole, to_server);
    case 'E':
      unsynced_ = true;
      return onExecute(head, to_server);
    case 'C':
      unsynced_ = true;
      return onClose(head, whole, to_server, to_client);
    case 'H':
      unsynced_ = true;
      return Action::kForward;
    case 'S': {
      unsynced_ = false;
      Action a = Action::kForward;
      // Not while the server skips: it would ignore the Closes too.
      if (!was_skipping && !server_.orphans_.empty()) {
        flushOrphans(to_server);
        to_server.append(head);
        a = Action::kReplace;
      }
      push(Kind::kSync);
      ++server_.batch_;
      ++view_epoch_;
      return a;
    }
    case 'Q': {
      Action a = onQuery(head, whole, to_server);
      ++view_epoch_;
      return a;
    }
    case 'F':
      push(Kind::kFunctionCall);
      ++view_epoch_;
      return Action::kForward;
    default:
      // CopyData, CopyDone, CopyFail and Terminate have no answer of their own.
      return Action::kForward;
  }
}

Rewriter::Action Rewriter::refuseParse(std::string error, std::string& to_server) {
  if (skipping_) return Action::kForward;  // PostgreSQL ignores it until the next Sync
  unsynced_ = true;
  appendRefusal(to_server, "sluice: refused, session state (session_state = refuse)");
  push(Kind::kRefusal).error = std::make_unique<std::string>(std::move(error));
  return Action::kReplace;
}

// Sends the message unchanged after any Close of orphaned statements, recording `kind`.
Rewriter::Action Rewriter::passThrough(std::string_view head, Kind kind, std::string& to_server) {
  if (server_.orphans_.empty()) {
    push(kind);
    return Action::kForward;
  }
  flushOrphans(to_server);
  to_server.append(head);
  push(kind);
  return Action::kReplace;
}

Rewriter::Action Rewriter::onParse(std::string_view msg, bool whole, std::string& to_server,
                                   std::string& to_client) {
  size_t pos = protocol::kHeaderSize;
  std::string_view name, query;
  if (!whole || !readCString(msg, pos, name) || !readCString(msg, pos, query)) {
    return passThrough(msg, Kind::kParse, to_server);  // PostgreSQL will reject it
  }
  std::string_view params = msg.substr(pos);
  if (params.size() < 2 || params.size() != 2 + 4 * size_t(protocol::readU16(params.data()))) {
    return passThrough(msg, Kind::kParse, to_server);
  }
  if (name.empty()) {
    unnamed_command_ = inspectSql(query).command;
    return passThrough(msg, Kind::kParse, to_server);
  }

  if (client_.findRef(name)) {
    // PostgreSQL answers 42P05 and skips to the next Sync, which aborts the transaction (or the
    // implicit one of this batch). sluice cannot answer that error itself, as the server would
    // run the rest of the batch. It sends the client's Parse under the server name of a
    // statement with the same text (prepared first if need be): PostgreSQL then makes its own
    // checks in its own order (syntax, aborted transaction, relations, then the name) on the
    // client's own query, and sluice puts the client's name back into the 42P05 message.
    auto text = std::make_shared<StatementDef>();
    text->id = g_next_def_id.fetch_add(1, std::memory_order_relaxed);
    text->name.assign(name);
    text->query.assign(query);
    text->params.assign(params);
    text->hash = keyHash(text->query, text->params);
    flushOrphans(to_server);
    uint64_t seq = ensurePrepared(text, to_server);
    ServerName sname(seq);
    appendHeader(to_server, 'P', sname.len + 1 + query.size() + 1 + params.size());
    to_server.append(sname.view());
    to_server.push_back('\0');
    to_server.append(query);
    to_server.push_back('\0');
    to_server.append(params);
    auto undo = std::make_unique<Undo>();
    undo->name.assign(name);
    attachUndo(push(Kind::kDuplicateParse, seq, std::move(text)), std::move(undo));
    return Action::kReplace;
  }

  auto def = std::make_shared<StatementDef>();
  def->id = g_next_def_id.fetch_add(1, std::memory_order_relaxed);
  def->name.assign(name);
  def->query.assign(query);
  def->params.assign(params);
  def->hash = keyHash(def->query, def->params);
  def->command = inspectSql(query).command;
  client_.by_name_.emplace(std::string(ClientStatements::key(name)), def);
  auto undo = std::make_unique<Undo>();
  undo->op = Undo::Op::kRegister;
  undo->def = def;

  flushOrphans(to_server);
  auto e = server_.find(*def);
  const bool found = e != server_.lru_.end();
  // Answer from the cache only when PostgreSQL would surely have accepted this Parse: nothing
  // earlier is unanswered that could abort the transaction (within this batch an earlier error
  // skips the answer too), and the transaction is not aborted (Parse would get 25P02).
  if (found && (e->confirmed || e->batch == server_.batch_) && owed_ready_ == 0 &&
      tx_status_ != 'E') {
    // Already prepared here (by this or another client): answer ParseComplete ourselves.
    server_.touch(e);
    ++server_.counters_.reused;
    Pending& p = push(Kind::kParseComplete, 0, std::move(def));
    attachUndo(p, std::move(undo));
    if (synthesized(front().kind)) emitSynthesized(to_client);
    return Action::kReplace;
  }
  if (found && e->confirmed) {
    // The server must decide, but the confirmed copy stays: the Parse goes out under a name of its
    // own, closed again once its ParseComplete arrives.
    uint64_t seq = server_.reserveSeq();
    appendParse(to_server, seq, *def);
    undo->real_parse = true;
    attachUndo(push(Kind::kParse, seq, def), std::move(undo));
    appendHiddenDescribe(to_server, seq, def, true);  // its result type, as of now
    return Action::kReplace;
  }
  // Sent under a new name that serves this text from now on (an older copy still unanswered is
  // closed when its ParseComplete arrives).
  if (found) server_.forget(*def, e->seq, false);
  makeRoom(to_server);
  e = server_.add(*def, def->id);
  appendParse(to_server, e->seq, *def);
  uint64_t seq = e->seq;
  undo->real_parse = true;
  attachUndo(push(Kind::kParse, seq, def), std::move(undo));
  appendHiddenDescribe(to_server, seq, def, true);  // its result type, as of now
  return Action::kReplace;
}

Rewriter::Action Rewriter::onBind(std::string_view msg, std::string& to_server) {
  size_t pos = protocol::kHeaderSize;
  std::string_view portal, stmt;
  if (!readCString(msg, pos, portal) || !readCString(msg, pos, stmt)) {
    return passThrough(msg, Kind::kBind, to_server);
  }
  const StatementRef* ref = stmt.empty() ? nullptr : client_.findRef(stmt);
  SqlCommand command = stmt.empty() ? unnamed_command_ : ref ? (*ref)->command : SqlCommand::kOther;
  setPortalCommand(portal, command);
  if (!ref) return passThrough(msg, Kind::kBind, to_server);  // "" or unknown: the server decides

  StatementRef def = *ref;
  uint64_t seq = 0;
  if (!readyToUse(def, seq, to_server)) return Action::kWait;
  ServerName sname(seq);
  uint32_t length = protocol::readU32(msg.data() + 1);
  appendHeader(to_server, 'B', length - 4 - stmt.size() + sname.len);
  to_server.append(portal);
  to_server.push_back('\0');
  to_server.append(sname.view());
  to_server.push_back('\0');
  to_server.append(msg.substr(pos));
  push(Kind::kBind, seq, std::move(def));
  return Action::kReplace;
}

// Before a Bind or Describe uses `def` on this server: prepares it there if needed (unless this
// is the message held for its result-type check) and checks its result type; appends a refusal
// when the type changed. False: hold the message until the check's answer arrives.
bool Rewriter::readyToUse(const StatementRef& def, uint64_t& seq, std::string& to_server) {
  if (check_.describe == 0 || check_.def != def->id) {  // not the message held for a check
    check_ = Check{};
    flushOrphans(to_server);
    seq = ensurePrepared(def, to_server);
  }
  bool refuse;
  if (checkResultType(def, seq, refuse, to_server) == Action::kWait) return false;
  if (refuse) {
    appendRefusal(to_server, "sluice: cached plan must not change result type");
    push(Kind::kRefusal);
  }
  return true;
}

Rewriter::Action Rewriter::onDescribe(std::string_view msg, bool whole, std::string& to_server) {
  size_t pos = protocol::kHeaderSize + 1;
  std::string_view name;
  if (!whole || msg.size() <= pos || !readCString(msg, pos, name)) {
    return passThrough(msg, Kind::kDescribePortal, to_server);
  }
  if (msg[protocol::kHeaderSize] != 'S') return passThrough(msg, Kind::kDescribePortal, to_server);
  const StatementRef* ref = name.empty() ? nullptr : client_.findRef(name);
  if (!ref) return passThrough(msg, Kind::kDescribeStatement, to_server);

  StatementRef def = *ref;
  uint64_t seq = 0;
  if (!readyToUse(def, seq, to_server)) return Action::kWait;
  appendDescribeStatement(to_server, seq);
  push(Kind::kDescribeStatement, seq, std::move(def));
  return Action::kReplace;
}

Rewriter::Action Rewriter::onExecute(std::string_view msg, std::string& to_server) {
  std::unique_ptr<Undo> undo;
  if (!portal_commands_.empty()) {
    size_t pos = protocol::kHeaderSize;
    std::string_view portal;
    if (readCString(msg, pos, portal)) {
      for (const auto& [name, command] : portal_commands_) {
        if (name == portal) {
          undo = clearAll();  // DEALLOCATE ALL or DISCARD ALL through the extended protocol
          break;
        }
      }
    }
  }
  Action a = passThrough(msg, Kind::kExecute, to_server);
  if (undo) {
    undo->commit_after = 1;
    attachUndo(fifo_.back(), std::move(undo));
  }
  return a;
}

Rewriter::Action Rewriter::onClose(std::string_view msg, bool whole, std::string& to_server,
                                   std::string& to_client) {
  size_t pos = protocol::kHeaderSize + 1;
  std::string_view name;
  if (!whole || msg.size() <= pos || msg[protocol::kHeaderSize] != 'S' ||
      !readCString(msg, pos, name) || name.empty()) {
    return passThrough(msg, Kind::kClose, to_server);
  }
  auto it = client_.by_name_.find(ClientStatements::key(name));
  if (it == client_.by_name_.end()) {
    // Not one of the client's: PostgreSQL answers CloseComplete anyway, or closes a statement the
    // client made with SQL PREPARE (a pinned session). Let the server do it.
    return passThrough(msg, Kind::kClose, to_server);
  }
  // The server statement stays for other uses (the cap evicts it in time).
  auto undo = std::make_unique<Undo>();
  undo->op = Undo::Op::kErase;
  undo->def = std::move(it->second);
  client_.by_name_.erase(it);
  flushOrphans(to_server);
  attachUndo(push(Kind::kCloseComplete), std::move(undo));
  if (synthesized(front().kind)) emitSynthesized(to_client);
  return Action::kReplace;
}

Rewriter::Action Rewriter::onQuery(std::string_view msg, bool whole, std::string& to_server) {
  if (!whole || msg.size() < protocol::kHeaderSize + 1) {
    push(Kind::kQuery);
    return Action::kForward;
  }
  std::string_view sql = msg.substr(protocol::kHeaderSize, msg.size() - protocol::kHeaderSize - 1);
  SqlInspection in = inspectSql(sql);
  switch (in.command) {
    case SqlCommand::kDeallocate: {
      auto it = client_.by_name_.find(ClientStatements::key(in.name));
      if (it == client_.by_name_.end()) break;  // not virtualized: the server answers
      // The server does not know the client's name. Send an empty query instead: it has the
      // same effect on the transaction (none) and its ReadyForQuery tells whether the
      // transaction is aborted, in which case PostgreSQL would have refused DEALLOCATE.
      auto undo = std::make_unique<Undo>();
      undo->op = Undo::Op::kErase;
      undo->def = std::move(it->second);
      client_.by_name_.erase(it);
      protocol::appendQuery(to_server, "");
      attachUndo(push(Kind::kDeallocate), std::move(undo));
      return Action::kReplace;
    }
    case SqlCommand::kDeallocateAll:
    case SqlCommand::kDiscardAll: {
      // The server drops every statement, also those other clients share: forget them all now,
      // so that messages pipelined behind this query prepare again.
      auto undo = clearAll();
      undo->commit_after = in.index + 1;
      attachUndo(push(Kind::kQuery), std::move(undo));
      return Action::kForward;
    }
    case SqlCommand::kOther:
      break;
  }
  push(Kind::kQuery);
  return Action::kForward;
}

Rewriter::Action Rewriter::onServerMessage(std::string_view msg, std::string& to_client) {
  if (msg.size() < protocol::kHeaderSize) return Action::kForward;
  const char type = msg[0];
  switch (type) {
    case 'D':  // DataRow, CopyData: the bulk of the traffic, never the end of an answer
    case 'd':
    case 'V':
    case 'N':  // NoticeResponse, ParameterStatus, NotificationResponse: may come at any time
    case 'S':
    case 'A':
      return Action::kForward;
    default:
      break;
  }
  if (type == 'Z' && msg.size() > protocol::kHeaderSize) tx_status_ = msg[protocol::kHeaderSize];
  if (size() == 0) return Action::kForward;  // not ours to judge (e.g. a FATAL at shutdown)
  if (type == 'E') return onError(msg, to_client);

  Pending& p = front();
  bool terminal = false;
  bool visible = true;
  switch (p.kind) {
    case Kind::kParse:
      terminal = type == '1';
      break;
    case Kind::kBind:
      terminal = type == '2';
      if (terminal && p.def && p.def->result == 0) {
        // The first run of a statement whose type it was not shown yet (its Parse was answered
        // from the cache): the rows it gets now are of the server statement's type.
        const ServerStatements::Entry* e = server_.entry(*p.def, p.seq);
        if (e) p.def->result = e->result;
      }
      break;
    case Kind::kDescribeStatement:  // 't' comes first
      terminal = type == 'T' || type == 'n';
      if (terminal && p.def) learnResult(p, resultFingerprint(msg));
      break;
    case Kind::kDescribePortal:
      terminal = type == 'T' || type == 'n';
      break;
    case Kind::kExecute:
      terminal = type == 'C' || type == 'I' || type == 's';
      break;
    case Kind::kClose:
      terminal = type == '3';
      break;
    case Kind::kQuery:
      if (type == 'C' && p.undo && ++p.undo->completes >= p.undo->commit_after) commit(p);
      [[fallthrough]];
    case Kind::kSync:
    case Kind::kFunctionCall:
      terminal = type == 'Z';
      break;
    case Kind::kDuplicateParse:
      // Only if the server had lost that statement (a DEALLOCATE sluice did not see): now it holds
      // the new text under that name. Drop it; the client still gets its 42P05, but the server
      // did not skip the rest of the batch.
      terminal = type == '1';
      visible = false;
      if (terminal) server_.forget(*p.def, p.seq, true);
      break;
    case Kind::kDeallocate:
      if (type == 'I') return Action::kReplace;  // the empty query's EmptyQueryResponse: drop
      terminal = type == 'Z';
      visible = false;
      break;
    case Kind::kInjectedParse:
      terminal = type == '1';
      visible = false;
      break;
    case Kind::kHiddenClose:
      terminal = type == '3';
      visible = false;
      break;
    case Kind::kHiddenDescribe:
      if (type == 't') return Action::kReplace;  // its ParameterDescription: nothing to send
      terminal = type == 'T' || type == 'n';
      visible = false;
      if (terminal) learnResult(p, resultFingerprint(msg));
      break;
    case Kind::kRefusal:
      terminal = type == '1';  // never: PostgreSQL cannot parse it
      visible = false;
      break;
    case Kind::kParseComplete:
    case Kind::kCloseComplete:
      break;  // never at the head: emitted as soon as they get there
    default:
      __builtin_trap();
  }
  if (!terminal) return Action::kForward;

  if ((p.kind == Kind::kParse || p.kind == Kind::kInjectedParse) && p.seq != 0) {
    server_.onPrepared(*p.def, p.seq);
  }
  const bool more = size() > 1 && synthesized(fifo_[head_ + 1].kind);
  if (visible && !more) {
    commit(p);
    popFront();
    return Action::kForward;  // the common case: nothing to add, nothing copied
  }
  if (p.kind == Kind::kDuplicateParse) {
    appendDuplicateError(to_client, p.undo->name);
  } else if (p.kind == Kind::kDeallocate) {
    const bool failed = p.undo->failed;  // the server already sent that error
    if (failed || tx_status_ == 'E') {
      if (!failed) appendAbortedError(to_client);
      undo(p);
    } else {
      protocol::appendCommandComplete(to_client, "DEALLOCATE");
    }
    to_client.append(msg);
  } else if (visible) {
    to_client.append(msg);
  }
  commit(p);
  popFront();
  emitSynthesized(to_client);
  return Action::kReplace;
}

Rewriter::Action Rewriter::onError(std::string_view msg, std::string& to_client) {
  Pending& p = front();
  if (p.kind == Kind::kSync || p.kind == Kind::kFunctionCall) {
    return Action::kForward;  // e.g. a deferred constraint failing at commit: ReadyForQuery follows
  }
  if (p.kind == Kind::kQuery) {
    // An error ends a simple query; ReadyForQuery follows. A DEALLOCATE ALL / DISCARD ALL whose
    // CommandComplete has not come did not run.
    if (p.undo) undo(p);
    return Action::kForward;
  }
  if (p.kind == Kind::kDeallocate) {
    p.undo->failed = true;
    return Action::kForward;
  }

  // An extended-protocol message failed: PostgreSQL skips everything up to the next Sync.
  ErrorSummary e = summarizeError(msg);
  Action action = Action::kForward;
  if (e.fatal) {
    // The connection ends; pass it on as it is.
  } else if (p.kind == Kind::kRefusal) {
    if (p.error) {
      to_client.append(*p.error);  // refuseParse()
    } else {
      appendResultTypeChanged(to_client);  // what PostgreSQL says of a statement whose type changed
    }
    action = Action::kReplace;
  } else if (p.kind == Kind::kHiddenDescribe && e.sqlstate == kCachedPlanChanged) {
    server_.forget(*p.def, p.seq, true);  // DDL came between its Parse and this Describe
  } else if (p.kind == Kind::kDuplicateParse) {
    // 42P05 names the server's statement; other errors (syntax, 25P02, ...) name none.
    if (appendErrorRenamed(to_client, msg, quotedServerName(p.seq), "\"" + p.undo->name + "\"")) {
      action = Action::kReplace;
    }
  } else if ((p.kind == Kind::kBind || p.kind == Kind::kDescribeStatement) && p.seq != 0) {
    if (e.sqlstate == kUndefinedPstatement) {
      // The client's own Parse of this name failed (so it does not exist, as PostgreSQL says),
      // or the server lost it (a DEALLOCATE sluice did not see): tell the client in its own
      // words, and prepare it again next time.
      server_.forget(*p.def, p.seq, false);
      appendErrorRenamed(to_client, msg, quotedServerName(p.seq), "\"" + p.def->name + "\"",
                         /*always=*/true);
      action = Action::kReplace;
    } else {
      if (e.sqlstate == kCachedPlanChanged) {
        // "cached plan must not change result type" after DDL: a direct connection keeps
        // failing until the client prepares again; sluice prepares again on the next use, so the
        // client sees the error once.
        server_.forget(*p.def, p.seq, true);
      }
      // Other errors may name the statement too ("bind message supplies 1 parameters, but
      // prepared statement ... requires 2"): in the client's words.
      if (appendErrorRenamed(to_client, msg, quotedServerName(p.seq), "\"" + p.def->name + "\"")) {
        action = Action::kReplace;
      }
    }
  }
  // Any other error is passed on as it is; that of an injected Parse stands for the message that
  // needed it, which the server now skips.

  size_t end = head_ + 1;
  while (end < fifo_.size() && fifo_[end].kind != Kind::kSync) ++end;
  // Undo in the reverse order of sending.
  for (size_t i = end; i-- > head_;) failed(fifo_[i]);
  for (size_t n = end - head_; n > 0; --n) popFront();
  if (size() == 0) skipping_ = true;  // the Sync that ends it has not been sent yet
  return action;
}

void Rewriter::failed(Pending& p) {
  if ((p.kind == Kind::kParse || p.kind == Kind::kInjectedParse) && p.seq != 0) {
    server_.onNotPrepared(*p.def, p.seq);
  } else if (p.kind == Kind::kHiddenClose) {
    server_.orphans_.push_back(p.seq);  // it was skipped: the statement is still there
  }
  // The message held for this answer is now skipped by the server as well (or, if a Sync was
  // between them, offered again and checked afresh).
  if (check_.describe == p.id) check_ = Check{};
  undo(p);
}

void Rewriter::undo(Pending& p) {
  if (!p.undo) return;
  Undo& u = *p.undo;
  auto& map = client_.by_name_;
  switch (u.op) {
    case Undo::Op::kRegister: {
      u.def->dead = true;
      auto it = map.find(ClientStatements::key(u.def->name));
      if (it != map.end() && it->second == u.def) map.erase(it);
      break;
    }
    case Undo::Op::kErase:
      if (!u.def->dead) map.try_emplace(std::string(ClientStatements::key(u.def->name)), u.def);
      break;
    case Undo::Op::kClearAll:
      for (auto& [name, def] : u.old) {
        if (!def->dead) map.try_emplace(name, def);
      }
      server_.endSetAside(u.set_aside, ServerStatements::SetAsideEnd::kFailed);
      break;
    case Undo::Op::kNone:
      break;
  }
  releaseUndo(p);
}

}  // namespace sluice::protocol
