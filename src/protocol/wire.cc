#include "protocol/wire.h"

namespace sluice::protocol {

int32_t Reader::int32() {
  if (failed_ || data_.size() - pos_ < 4) {
    failed_ = true;
    return 0;
  }
  int32_t v = int32_t(readU32(data_.data() + pos_));
  pos_ += 4;
  return v;
}

int16_t Reader::int16() {
  if (failed_ || data_.size() - pos_ < 2) {
    failed_ = true;
    return 0;
  }
  int16_t v = int16_t(readU16(data_.data() + pos_));
  pos_ += 2;
  return v;
}

uint8_t Reader::byte() {
  if (failed_ || pos_ >= data_.size()) {
    failed_ = true;
    return 0;
  }
  return uint8_t(data_[pos_++]);
}

std::string_view Reader::cstring() {
  if (failed_) return {};
  size_t nul = data_.find('\0', pos_);
  if (nul == std::string_view::npos) {
    failed_ = true;
    return {};
  }
  std::string_view s = data_.substr(pos_, nul - pos_);
  pos_ = nul + 1;
  return s;
}

std::string_view Reader::bytes(size_t n) {
  if (failed_ || data_.size() - pos_ < n) {
    failed_ = true;
    return {};
  }
  std::string_view s = data_.substr(pos_, n);
  pos_ += n;
  return s;
}

const std::string* StartupMessage::find(std::string_view key) const {
  for (const auto& [k, v] : params) {
    if (k == key) return &v;
  }
  return nullptr;
}

StartupPacket parseStartupPacket(std::string_view packet) {
  if (packet.size() < 8) return StartupError{"startup packet too short"};
  uint32_t length = readU32(packet.data());
  if (length != packet.size()) return StartupError{"startup packet length mismatch"};
  Reader r(packet.substr(4));
  int32_t code = r.int32();
  switch (code) {
    case kSslRequestCode:
      if (length != 8) return StartupError{"invalid SSLRequest length"};
      return SslRequest{};
    case kGssEncRequestCode:
      if (length != 8) return StartupError{"invalid GSSENCRequest length"};
      return GssEncRequest{};
    case kCancelRequestCode: {
      if (length != 16) return StartupError{"invalid CancelRequest length"};
      CancelRequest c;
      c.pid = uint32_t(r.int32());
      c.key = uint32_t(r.int32());
      return c;
    }
    default:
      break;
  }
  if ((code >> 16) != 3) {
    return StartupError{"unsupported frontend protocol " + std::to_string(code >> 16) + "." +
                        std::to_string(code & 0xffff) + ": server supports 3.0"};
  }
  StartupMessage m;
  m.version = code;
  while (true) {
    std::string_view key = r.cstring();
    if (r.failed()) return StartupError{"invalid startup packet layout: missing terminator"};
    if (key.empty()) break;
    std::string_view value = r.cstring();
    if (r.failed()) return StartupError{"invalid startup packet layout: missing value"};
    m.params.emplace_back(std::string(key), std::string(value));
  }
  if (!r.atEnd()) return StartupError{"invalid startup packet layout: trailing bytes"};
  return m;
}

std::map<char, std::string> parseErrorFields(std::string_view payload) {
  std::map<char, std::string> fields;
  Reader r(payload);
  while (!r.atEnd()) {
    uint8_t t = r.byte();
    if (r.failed() || t == 0) break;
    std::string_view v = r.cstring();
    if (r.failed()) break;
    fields[char(t)] = std::string(v);
  }
  return fields;
}

void Writer::begin(char type) {
  if (type != 0) out_.push_back(type);
  start_ = out_.size();
  out_.append(4, '\0');
}

void Writer::int32(int32_t v) {
  uint32_t be = __builtin_bswap32(uint32_t(v));
  out_.append(reinterpret_cast<const char*>(&be), 4);
}

void Writer::int16(int16_t v) {
  uint16_t be = __builtin_bswap16(uint16_t(v));
  out_.append(reinterpret_cast<const char*>(&be), 2);
}

void Writer::end() {
  uint32_t be = __builtin_bswap32(uint32_t(out_.size() - start_));
  std::memcpy(&out_[start_], &be, 4);
}

namespace {
void appendErrorLike(std::string& out, char type, const ErrorInfo& e) {
  Writer w(out);
  w.begin(type);
  w.byte('S');
  w.cstring(e.severity);
  w.byte('V');
  w.cstring(e.severity);
  w.byte('C');
  w.cstring(e.sqlstate);
  w.byte('M');
  w.cstring(e.message);
  if (!e.detail.empty()) {
    w.byte('D');
    w.cstring(e.detail);
  }
  if (!e.hint.empty()) {
    w.byte('H');
    w.cstring(e.hint);
  }
  w.byte(0);
  w.end();
}
}  // namespace

void appendError(std::string& out, const ErrorInfo& e) { appendErrorLike(out, 'E', e); }
void appendNotice(std::string& out, const ErrorInfo& e) { appendErrorLike(out, 'N', e); }

void appendAuthRequest(std::string& out, int32_t code, std::string_view extra) {
  Writer w(out);
  w.begin('R');
  w.int32(code);
  w.bytes(extra);
  w.end();
}

void appendParameterStatus(std::string& out, std::string_view name, std::string_view value) {
  Writer w(out);
  w.begin('S');
  w.cstring(name);
  w.cstring(value);
  w.end();
}

void appendBackendKeyData(std::string& out, uint32_t pid, uint32_t key) {
  Writer w(out);
  w.begin('K');
  w.int32(int32_t(pid));
  w.int32(int32_t(key));
  w.end();
}

void appendReadyForQuery(std::string& out, char status) {
  Writer w(out);
  w.begin('Z');
  w.byte(uint8_t(status));
  w.end();
}

void appendQuery(std::string& out, std::string_view sql) {
  Writer w(out);
  w.begin('Q');
  w.cstring(sql);
  w.end();
}

void appendParameterizedQuery(std::string& out, std::string_view sql,
                              const std::vector<std::optional<std::string>>& params) {
  Writer w(out);
  w.begin('P');
  w.cstring("");
  w.cstring(sql);
  w.int16(0);  // parameter types: inferred
  w.end();
  w.begin('B');
  w.cstring("");
  w.cstring("");
  w.int16(0);  // all parameters in text format
  w.int16(int16_t(params.size()));
  for (const auto& v : params) {
    if (!v) {
      w.int32(-1);
      continue;
    }
    w.int32(int32_t(v->size()));
    w.bytes(*v);
  }
  w.int16(0);  // all results in text format
  w.end();
  w.begin('E');
  w.cstring("");
  w.int32(0);
  w.end();
  w.begin('S');
  w.end();
}

void appendTerminate(std::string& out) {
  Writer w(out);
  w.begin('X');
  w.end();
}

void appendPassword(std::string& out, std::string_view password) {
  Writer w(out);
  w.begin('p');
  w.cstring(password);
  w.end();
}

void appendSaslInitialResponse(std::string& out, std::string_view mechanism,
                               std::string_view data) {
  Writer w(out);
  w.begin('p');
  w.cstring(mechanism);
  w.int32(int32_t(data.size()));
  w.bytes(data);
  w.end();
}

void appendSaslResponse(std::string& out, std::string_view data) {
  Writer w(out);
  w.begin('p');
  w.bytes(data);
  w.end();
}

void appendStartup(std::string& out,
                   const std::vector<std::pair<std::string, std::string>>& params) {
  Writer w(out);
  w.begin(0);
  w.int32(kProtocolVersion3);
  for (const auto& [k, v] : params) {
    w.cstring(k);
    w.cstring(v);
  }
  w.byte(0);
  w.end();
}

void appendCancelRequest(std::string& out, uint32_t pid, uint32_t key) {
  Writer w(out);
  w.begin(0);
  w.int32(kCancelRequestCode);
  w.int32(int32_t(pid));
  w.int32(int32_t(key));
  w.end();
}

void appendSslRequest(std::string& out) {
  Writer w(out);
  w.begin(0);
  w.int32(kSslRequestCode);
  w.end();
}

void appendRowDescription(std::string& out, const std::vector<std::string>& columns,
                          const std::vector<uint32_t>& type_oids) {
  Writer w(out);
  w.begin('T');
  w.int16(int16_t(columns.size()));
  for (size_t i = 0; i < columns.size(); ++i) {
    w.cstring(columns[i]);
    w.int32(0);                                               // table oid
    w.int16(0);                                               // column number
    uint32_t oid = i < type_oids.size() ? type_oids[i] : 25;  // text
    w.int32(int32_t(oid));
    w.int16(oid == 20 ? 8 : (oid == 23 ? 4 : -1));
    w.int32(-1);  // typmod
    w.int16(0);   // text format
  }
  w.end();
}

void appendDataRow(std::string& out, const std::vector<std::optional<std::string>>& values) {
  Writer w(out);
  w.begin('D');
  w.int16(int16_t(values.size()));
  for (const auto& v : values) {
    if (!v) {
      w.int32(-1);
    } else {
      w.int32(int32_t(v->size()));
      w.bytes(*v);
    }
  }
  w.end();
}

void appendCommandComplete(std::string& out, std::string_view tag) {
  Writer w(out);
  w.begin('C');
  w.cstring(tag);
  w.end();
}

void appendEmptyQueryResponse(std::string& out) {
  Writer w(out);
  w.begin('I');
  w.end();
}

std::string quoteLiteral(std::string_view s) {
  // As PostgreSQL's quote_literal(): with a backslash, an E'' literal with doubled backslashes,
  // which reads the same whatever the server's standard_conforming_strings (a client can turn it
  // off on a server connection that is later synced for another client).
  std::string q = s.find('\\') == std::string_view::npos ? "'" : "E'";
  for (char c : s) {
    if (c == '\'' || c == '\\') q.push_back(c);
    q.push_back(c);
  }
  q.push_back('\'');
  return q;
}

std::string quoteIdent(std::string_view s) {
  std::string q = "\"";
  for (char c : s) {
    if (c == '"') q.push_back('"');
    q.push_back(c);
  }
  q.push_back('"');
  return q;
}

}  // namespace sluice::protocol
