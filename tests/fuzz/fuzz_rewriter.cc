// Fuzz target: the prepared-statement Rewriter (protocol/prepared_statements.h) driven the way
// the relay drives it (see the Attachment in prepared_statements_test.cc), with fuzzed client
// and server messages interleaved. The input is a script of operations; each starts with one
// byte:
//   0x00-0x5f  a client message: a type from kClientTypes, then a payload built from a small
//              vocabulary of statement names and query texts or raw fuzzed bytes;
//   0x60-0x8f  a server message: a type from kServerTypes, payload likewise (mostly nonsense:
//              what a confused or hostile server could send);
//   0x90-0x9f  a DDL elsewhere: the result type of every query changes (one more column);
//   0xa0-0xaf  the server answers the next 1..16 messages of what sluice sent it, as PostgreSQL
//              would if everything succeeds (Server::sent: ParseComplete, ParameterDescription
//              + RowDescription, BindComplete, rows, CommandComplete, ReadyForQuery, ...);
//   0xb0-0xbf  the same, except that the next answer is an ErrorResponse, after which the server
//              does what PostgreSQL does: the rest of a Query or FunctionCall is not answered
//              but its ReadyForQuery is; after an extended-protocol message, nothing is answered
//              up to the next Sync;
//   0xc0-0xdf  a client Parse refused by the relay (Rewriter::refuseParse);
//   0xe0-0xef  detach: drop the Rewriter (the server then counts as unknown unless idle) and
//              attach a new one to the next of two servers, as transaction pooling does;
//   0xf0-0xff  change the server's max_prepared_statements (1..4), as a RELOAD does.
// Invariants checked (the relay relies on them): clientBytesNeeded() lies within the message; a
// kWait leaves to_client empty; onServerMessage never answers kWait, and never kReplace for a
// header-only message; no message is offered again forever (a wait ends after the server's
// answers: a kWait leaves something pending).
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <string_view>

#include "fuzz_util.h"
#include "protocol/prepared_statements.h"
#include "protocol/wire.h"

namespace sluice::fuzz {

// Reads the script front to back, one byte per choice, so seeds can be written by hand
// (tests/fuzz/corpus/fuzz_rewriter/README). Past the end every choice is 0.
class Script {
 public:
  explicit Script(std::string_view data) : data_(data) {}
  bool empty() const { return pos_ >= data_.size(); }
  uint8_t byte() { return pos_ < data_.size() ? uint8_t(data_[pos_++]) : 0; }
  bool flag() { return byte() & 1; }
  template <typename T, size_t N>
  T pick(const T (&values)[N]) {
    return values[byte() % N];
  }
  // A length byte, then that many bytes (fewer at the end of the script).
  std::string raw() {
    used_raw_ = true;
    size_t n = byte();
    std::string out(data_.substr(pos_, n));
    pos_ += out.size();
    return out;
  }

  // A raw (probably malformed) message was made: the answering Server no longer models it.
  bool usedRaw() const { return used_raw_; }

 private:
  std::string_view data_;
  size_t pos_ = 0;
  bool used_raw_ = false;
};

constexpr char kClientTypes[] = {'P', 'B', 'D', 'E', 'C', 'S', 'H', 'Q', 'F', 'd', 'c', 'X'};
constexpr char kServerTypes[] = {'1', '2', '3', 't', 'T', 'n', 'C', 'I', 's', 'Z',
                                 'E', 'D', 'N', 'S', 'A', 'V', 'G', 'c', 'K'};
constexpr const char* kNames[] = {
    "", "s1", "s2", "S1",
    ("a_very_long_statement_name_that_is_longer_than_sixty_three_bytes_so_it_is_truncated")};
constexpr const char* kQueries[] = {"SELECT 1",
                                    "SELECT $1::int",
                                    "DEALLOCATE s1",
                                    "DEALLOCATE ALL",
                                    "DISCARD ALL",
                                    "SELECT 1; DEALLOCATE ALL",
                                    "deallocate prepare \"S1\"",
                                    "BEGIN",
                                    "COMMIT",
                                    ""};

constexpr char kStatuses[] = {'I', 'T', 'E'};
constexpr const char* kSqlstates[] = {"42601", "26000", "0A000", "42P05", "25P02"};
constexpr const char* kTags[] = {"SELECT 1", "DEALLOCATE", "DEALLOCATE ALL", "DISCARD ALL"};

std::string cstr(std::string_view s) { return std::string(s) + '\0'; }
std::string int16(int v) { return {char((v >> 8) & 0xff), char(v & 0xff)}; }
std::string int32(uint32_t v) {
  return {char(v >> 24), char((v >> 16) & 0xff), char((v >> 8) & 0xff), char(v & 0xff)};
}

std::string pickName(Script& in) { return in.pick(kNames); }

// A mostly well-formed payload for `type`, or raw bytes when the script says so.
std::string clientPayload(char type, Script& in) {
  if (in.byte() == 0xff) return in.raw();
  switch (type) {
    case 'P': {
      std::string p = cstr(pickName(in)) + cstr(in.pick(kQueries));
      int n = in.byte() % 3;
      p += int16(n);
      for (int i = 0; i < n; ++i) p += int32(23);
      return p;
    }
    case 'B':
      return cstr(in.flag() ? "" : "p1") + cstr(pickName(in)) + int16(0) + int16(0) + int16(0);
    case 'D':
    case 'C':
      return std::string(1, in.flag() ? 'S' : 'P') + cstr(pickName(in));
    case 'E':
      return cstr(in.flag() ? "" : "p1") + int32(0);
    case 'Q':
      return cstr(in.pick(kQueries));
    default:
      return {};
  }
}

std::string serverPayload(char type, Script& in) {
  if (in.byte() == 0xff) return in.raw();
  switch (type) {
    case 'Z':
      return std::string(1, in.pick(kStatuses));
    case 'E': {
      const char* code = in.pick(kSqlstates);
      return "SERROR" + std::string(1, '\0') + "C" + cstr(code) + "M" + cstr("boom") +
             (in.flag() ? "Rrevalidate_cached_query" + std::string(1, '\0') : "") + '\0';
    }
    case 'C':
      return cstr(in.pick(kTags));
    case 'T': {
      int n = in.byte() % 3;
      std::string p = int16(n);
      for (int i = 0; i < n; ++i) {
        p += cstr("c") + int32(0) + int16(0) + int32(in.flag() ? 23 : 25) + int16(4) +
             int32(uint32_t(-1)) + int16(0);
      }
      return p;
    }
    case 't':
      return int16(0);
    case 'D':
      return int16(1) + int32(1) + "x";
    default:
      return {};
  }
}

// What one server connection would answer: for every message sluice sends it, the messages
// PostgreSQL sends back when it succeeds. No state beyond that queue: enough to let the Rewriter
// see plausible answer streams, not a PostgreSQL model (prepared_statements_test.cc has that).
struct Server {
  explicit Server(size_t cap) : statements(cap) {}
  protocol::ServerStatements statements;
  char status = 'I';
  struct Answer {
    char request;     // the type of the message it answers
    std::string msg;  // one whole server message
  };
  std::deque<Answer> answers;  // not delivered yet
  bool skipping = false;       // an error happened: ignore everything up to a Sync

  // The next answer becomes an ErrorResponse (appended to `out`); drops what PostgreSQL then
  // does not send.
  void fail(std::string& out) {
    protocol::ErrorInfo info;
    info.sqlstate = "42P01";
    info.message = "relation does not exist";
    protocol::appendError(out, info);
    char request = answers.front().request;
    if (request == 'Q' || request == 'F') {
      // The rest of this query is not run; its ReadyForQuery comes.
      while (answers.front().msg[0] != 'Z') answers.pop_front();
    } else if (request != 'S') {
      // Extended protocol: everything up to the Sync is ignored, Queries and FunctionCalls too.
      while (!answers.empty() && answers.front().request != 'S') answers.pop_front();
      if (answers.empty()) skipping = true;  // that Sync has not been sent yet
    }
  }

  void sent(std::string_view bytes, int ddl) {
    while (auto h = protocol::peekHeader(bytes)) {
      if (h->length < 4 || h->total() > bytes.size()) break;
      answer(h->type, bytes.substr(protocol::kHeaderSize, h->length - 4), ddl);
      bytes.remove_prefix(h->total());
    }
  }

 private:
  void expect(char type, std::string_view payload) {
    answers.push_back({request_, frame(type, payload)});
  }
  char request_ = 0;  // the message being answered
  static std::string rowDescription(int ddl) {
    int n = 1 + ddl % 3;
    std::string p = int16(n);
    for (int i = 0; i < n; ++i) {
      p += cstr("c" + std::to_string(i)) + int32(0) + int16(0) + int32(23) + int16(4) +
           int32(uint32_t(-1)) + int16(0);
    }
    return p;
  }
  void answer(char type, std::string_view payload, int ddl) {
    request_ = type;
    if (skipping) {  // after an error in the extended protocol: everything up to the Sync
      if (type == 'S') {
        skipping = false;
        expect('Z', "I");
      }
      return;
    }
    switch (type) {
      case 'P':
        if (payload.starts_with(std::string_view("sluice_refused\0", 15))) {
          std::string e;
          protocol::ErrorInfo info;
          info.sqlstate = "42601";
          info.message = "syntax error";
          protocol::appendError(e, info);
          answers.push_back({type, e});
          skipping = true;
          break;
        }
        expect('1', "");
        break;
      case 'B':
        expect('2', "");
        break;
      case 'D':
        if (!payload.empty() && payload[0] == 'S') expect('t', int16(0));
        expect('T', rowDescription(ddl));
        break;
      case 'E':
        expect('D', int16(1) + int32(1) + "1");
        expect('C', cstr("SELECT 1"));
        break;
      case 'C':
        expect('3', "");
        break;
      case 'S':
        expect('Z', "I");
        break;
      case 'Q': {
        // One CommandComplete per statement (the vocabulary has no quoted ';').
        std::string_view sql = payload.substr(0, payload.find('\0'));
        bool any = false;
        while (!sql.empty()) {
          size_t semi = sql.find(';');
          std::string_view stmt = sql.substr(0, semi);
          if (stmt.find_first_not_of(' ') != std::string_view::npos) {
            expect('C', cstr(stmt));
            any = true;
          }
          if (semi == std::string_view::npos) break;
          sql.remove_prefix(semi + 1);
        }
        if (!any) expect('I', "");
        expect('Z', "I");
        break;
      }
      case 'F':
        expect('V', int32(uint32_t(-1)));
        expect('Z', "I");
        break;
      default:  // Flush, CopyData, ...: no answer of their own
        break;
    }
  }
};

class Driver {
 public:
  Driver() {
    servers_[0] = std::make_unique<Server>(4);
    servers_[1] = std::make_unique<Server>(2);
    attach();
  }

  void clientMessage(std::string msg) {
    waiting_.push_back(std::move(msg));
    pump();
  }
  void refusedParse(std::string msg) {
    refuse_next_ = true;
    clientMessage(std::move(msg));
  }

  void serverMessage(const std::string& m) {
    std::string tc;
    if (!protocol::Rewriter::serverBodyNeeded(m[0])) {
      auto a = rw_->onServerMessage(std::string_view(m).substr(0, 5), tc);
      check(a == protocol::Rewriter::Action::kForward, "header-only server message not forwarded");
      check(tc.empty(), "header-only server message produced bytes");
    } else {
      auto a = rw_->onServerMessage(m, tc);
      check(a != protocol::Rewriter::Action::kWait, "onServerMessage answered kWait");
    }
    if (m[0] == 'Z' && m.size() > 5) servers_[current_]->status = m[5];
    pump();
  }

  void reattach() {
    waiting_.clear();
    refuse_next_ = false;
    bool idle = rw_->idle();
    rw_.reset();
    servers_[current_]->answers.clear();
    if (!idle) {
      // The relay closes a server left in an unknown state: start that one afresh.
      servers_[current_] = std::make_unique<Server>(servers_[current_]->statements.maxPrepared());
    }
    current_ = (current_ + 1) % 2;
    attach();
  }

  // The server sends up to `n` of its answers; with `error`, an ErrorResponse first in place of
  // the next answer (Server::fail).
  void deliver(size_t n, bool error) {
    Server& server = *servers_[current_];
    if (error && !server.answers.empty()) {
      std::string e;
      server.fail(e);
      serverMessage(e);
    }
    for (size_t i = 0; i < n && !servers_[current_]->answers.empty(); ++i) {
      std::string m = std::move(servers_[current_]->answers.front().msg);
      servers_[current_]->answers.pop_front();
      serverMessage(m);
    }
    Server& now = *servers_[current_];
    if (!tainted_ && now.answers.empty() && !now.skipping && waiting_.empty()) {
      // Every message sent was answered as PostgreSQL would: nothing can still be owed.
      check(rw_->idle(), "all answered, yet the Rewriter is not idle");
    }
  }
  void taint() { tainted_ = true; }
  void ddl() { ++ddl_; }

  void setCap(size_t n) { servers_[current_]->statements.setMaxPrepared(n); }

 private:
  void attach() {
    Server& s = *servers_[current_];
    rw_ = std::make_unique<protocol::Rewriter>(client_, s.statements, s.status);
  }

  // Offers waiting client messages in order until one must wait.
  void pump() {
    while (!waiting_.empty()) {
      const std::string& m = waiting_.front();
      uint32_t length = protocol::readU32(m.data() + 1);
      size_t need = protocol::Rewriter::clientBytesNeeded(m[0], length);
      check(need >= protocol::kHeaderSize && need <= m.size(), "clientBytesNeeded out of range");
      std::string ts, tc;
      protocol::Rewriter::Action a;
      if (refuse_next_ && m[0] == 'P') {
        std::string err;
        protocol::ErrorInfo e;
        e.sqlstate = "55000";
        e.message = "refused";
        protocol::appendError(err, e);
        a = rw_->refuseParse(err, ts);
      } else {
        a = rw_->onClientMessage(std::string_view(m).substr(0, need), ts, tc);
      }
      Server& server = *servers_[current_];
      if (a == protocol::Rewriter::Action::kWait) {
        server.sent(ts, ddl_);
        check(tc.empty(), "kWait with bytes for the client");
        // It waits for an answer to something sent: with nothing pending it would wait forever.
        check(!rw_->idle(), "kWait while nothing is pending");
        return;
      }
      if (a == protocol::Rewriter::Action::kForward) {
        server.sent(m, ddl_);
      } else {
        server.sent(ts + m.substr(need), ddl_);
      }
      refuse_next_ = false;
      waiting_.pop_front();
    }
  }

  protocol::ClientStatements client_;
  std::unique_ptr<Server> servers_[2];
  size_t current_ = 0;
  std::unique_ptr<protocol::Rewriter> rw_;
  std::deque<std::string> waiting_;  // client messages not yet consumed (the first may wait)
  bool refuse_next_ = false;
  int ddl_ = 0;  // DDL statements run so far: changes every result type
  // A raw message went either way: the answering Server no longer models what PostgreSQL does.
  bool tainted_ = false;
};

}  // namespace sluice::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sluice::fuzz;
  Script in(std::string_view(reinterpret_cast<const char*>(data), size));
  Driver d;
  for (int ops = 0; ops < 256 && !in.empty(); ++ops) {
    uint8_t op = in.byte();
    if (op < 0x60) {
      char type = in.pick(kClientTypes);
      d.clientMessage(frame(type, clientPayload(type, in)));
    } else if (op < 0x90) {
      char type = in.pick(kServerTypes);
      d.taint();
      d.serverMessage(frame(type, serverPayload(type, in)));
    } else if (op < 0xa0) {
      d.ddl();
    } else if (op < 0xc0) {
      if (in.usedRaw()) d.taint();
      d.deliver(1 + op % 16, op >= 0xb0);
    } else if (op < 0xe0) {
      d.refusedParse(frame('P', clientPayload('P', in)));
    } else if (op < 0xf0) {
      d.reattach();
    } else {
      d.setCap(1 + op % 4);
    }
  }
  return 0;
}
