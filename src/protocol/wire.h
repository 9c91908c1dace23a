// The PostgreSQL v3 wire format: framing, decoding and encoding of the messages sluice itself
// reads or writes. Pure: no I/O, no allocation beyond the std::string it appends to, no global
// state; every function is thread-safe. Relayed messages are never re-encoded: the session
// forwards their bytes as they came (see docs/architecture.md, "the life of a query").
#pragma once

#include <cstdint>
#include <cstring>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace sluice::protocol {

inline constexpr size_t kHeaderSize = 5;  // type byte + int32 length (length counts itself)
inline constexpr int32_t kProtocolVersion3 = 196608;  // 3.0
inline constexpr int32_t kCancelRequestCode = 80877102;
inline constexpr int32_t kSslRequestCode = 80877103;
inline constexpr int32_t kGssEncRequestCode = 80877104;
inline constexpr size_t kMaxStartupPacket = 10000;  // PostgreSQL's MAX_STARTUP_PACKET_LENGTH

inline uint32_t readU32(const char* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return __builtin_bswap32(v);
}
inline uint16_t readU16(const char* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return __builtin_bswap16(v);
}

// A complete or partial message header found at the front of a byte range.
struct Header {
  char type = 0;
  uint32_t length = 0;  // as on the wire: payload + 4
  size_t total() const { return size_t(length) + 1; }
};

// Reads a header from `data` if at least 5 bytes are there. A length below 4 is a protocol
// violation the caller must reject.
inline std::optional<Header> peekHeader(std::string_view data) {
  if (data.size() < kHeaderSize) return std::nullopt;
  return Header{data[0], readU32(data.data() + 1)};
}

// Sequential reader over one message payload; any short read sets failed() instead of reading
// past the end, so malformed input from the network can never crash the decoder.
class Reader {
 public:
  explicit Reader(std::string_view payload) : data_(payload) {}
  int32_t int32();
  int16_t int16();
  uint8_t byte();
  std::string_view cstring();  // up to the next NUL, which is consumed
  std::string_view bytes(size_t n);
  std::string_view rest() const { return data_.substr(pos_); }
  bool failed() const { return failed_; }
  bool atEnd() const { return pos_ >= data_.size(); }

 private:
  std::string_view data_;
  size_t pos_ = 0;
  bool failed_ = false;
};

// Startup-phase packets (no type byte).
struct StartupMessage {
  int32_t version = 0;
  std::vector<std::pair<std::string, std::string>> params;  // in the order sent
  const std::string* find(std::string_view key) const;
};
struct SslRequest {};
struct GssEncRequest {};
struct CancelRequest {
  uint32_t pid = 0;
  uint32_t key = 0;
};
struct StartupError {
  std::string message;
};
using StartupPacket =
    std::variant<StartupMessage, SslRequest, GssEncRequest, CancelRequest, StartupError>;

// `packet` is the whole packet including its 4-byte length.
StartupPacket parseStartupPacket(std::string_view packet);

// Fields of an ErrorResponse/NoticeResponse payload, keyed by field type ('S', 'C', 'M', ...).
std::map<char, std::string> parseErrorFields(std::string_view payload);

// Builders: each appends one complete message to `out`.
class Writer {
 public:
  explicit Writer(std::string& out) : out_(out) {}
  void begin(char type);  // type 0: startup-style packet without a type byte
  void int32(int32_t v);
  void int16(int16_t v);
  void byte(uint8_t v) { out_.push_back(char(v)); }
  void cstring(std::string_view s) {
    out_.append(s);
    out_.push_back('\0');
  }
  void bytes(std::string_view s) { out_.append(s); }
  void end();  // patches the length

 private:
  std::string& out_;
  size_t start_ = 0;
};

struct ErrorInfo {
  const char* severity = "ERROR";  // ERROR, FATAL, WARNING, NOTICE
  std::string sqlstate;
  std::string message;
  std::string detail;
  std::string hint;
};
void appendError(std::string& out, const ErrorInfo& e);                               // 'E'
void appendNotice(std::string& out, const ErrorInfo& e);                              // 'N'
void appendAuthRequest(std::string& out, int32_t code, std::string_view extra = {});  // 'R'
void appendParameterStatus(std::string& out, std::string_view name, std::string_view value);
void appendBackendKeyData(std::string& out, uint32_t pid, uint32_t key);
void appendReadyForQuery(std::string& out, char status);
void appendQuery(std::string& out, std::string_view sql);
void appendTerminate(std::string& out);
// Parse (unnamed statement) + Bind (text parameters, NULL for nullopt; text results) + Execute
// + Sync: one statement with parameters sent as values, never spliced into the SQL text.
void appendParameterizedQuery(std::string& out, std::string_view sql,
                              const std::vector<std::optional<std::string>>& params);
void appendPassword(std::string& out, std::string_view password);  // 'p' (also md5)
void appendSaslInitialResponse(std::string& out, std::string_view mechanism, std::string_view data);
void appendSaslResponse(std::string& out, std::string_view data);
void appendStartup(std::string& out,
                   const std::vector<std::pair<std::string, std::string>>& params);
void appendCancelRequest(std::string& out, uint32_t pid, uint32_t key);
void appendSslRequest(std::string& out);
// RowDescription with text columns, DataRow and CommandComplete for the admin console.
void appendRowDescription(std::string& out, const std::vector<std::string>& columns,
                          const std::vector<uint32_t>& type_oids);
void appendDataRow(std::string& out, const std::vector<std::optional<std::string>>& values);
void appendCommandComplete(std::string& out, std::string_view tag);
void appendEmptyQueryResponse(std::string& out);

// Authentication request codes ('R').
inline constexpr int32_t kAuthOk = 0;
inline constexpr int32_t kAuthCleartext = 3;
inline constexpr int32_t kAuthMd5 = 5;
inline constexpr int32_t kAuthSasl = 10;
inline constexpr int32_t kAuthSaslContinue = 11;
inline constexpr int32_t kAuthSaslFinal = 12;

// Quotes a value as a SQL string literal that means the same whatever standard_conforming_strings
// is: 'it''s', and E'C:\\x' for C:\x (as PostgreSQL's quote_literal()).
std::string quoteLiteral(std::string_view s);
// Quotes an identifier: "a""b".
std::string quoteIdent(std::string_view s);

}  // namespace sluice::protocol
