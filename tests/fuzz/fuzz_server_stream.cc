// Fuzz target: arbitrary bytes as a stream of server (backend) messages. Two decoders read them:
//  - the pure pieces sluice applies to server messages: protocol::peekHeader, the Reader over
//    each message type's layout, protocol::parseErrorFields (ErrorResponse/NoticeResponse) and
//    protocol::resultFingerprint (RowDescription/NoData);
//  - tools::ClientProtocol, the client end of a whole connection (login with md5 or SCRAM,
//    queries), fed the same bytes in chunks as they might arrive from a socket.
// Invariants: an ErrorResponse's fields survive a round trip through appendError; the fingerprint
// is never 0; ClientProtocol consumes only whole messages.
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>

#include "fuzz_util.h"
#include "protocol/prepared_statements.h"
#include "protocol/wire.h"
#include "tools/client_protocol.h"

namespace sluice::fuzz {

void decodeServerMessage(char type, std::string_view msg) {
  std::string_view payload = msg.substr(protocol::kHeaderSize);
  protocol::Reader r(payload);
  switch (type) {
    case 'R': {  // Authentication*
      int32_t code = r.int32();
      if (code == protocol::kAuthSasl) {
        while (!r.failed() && !r.cstring().empty()) {
        }
      } else if (code == protocol::kAuthMd5) {
        r.bytes(4);
      }
      break;
    }
    case 'S':  // ParameterStatus
      r.cstring();
      r.cstring();
      break;
    case 'K':  // BackendKeyData
      r.int32();
      r.int32();
      break;
    case 'Z':  // ReadyForQuery
      r.byte();
      break;
    case 'E':
    case 'N': {  // ErrorResponse / NoticeResponse
      std::map<char, std::string> fields = protocol::parseErrorFields(payload);
      // Round trip what sluice itself would send from these fields.
      if (fields.count('S') && fields.count('C') && fields.count('M')) {
        protocol::ErrorInfo e;
        e.severity = fields['S'].c_str();
        e.sqlstate = fields['C'];
        e.message = fields['M'];
        if (fields.count('D')) e.detail = fields['D'];
        if (fields.count('H')) e.hint = fields['H'];
        std::string out;
        protocol::appendError(out, e);
        auto h = protocol::peekHeader(out);
        check(h && h->type == 'E' && h->total() == out.size(), "appendError framing");
        auto again = protocol::parseErrorFields(std::string_view(out).substr(5));
        check(again['S'] == fields['S'] && again['C'] == fields['C'] && again['M'] == fields['M'],
              "ErrorResponse fields do not round-trip");
      }
      break;
    }
    case 'T':    // RowDescription
    case 'n': {  // NoData
      check(protocol::resultFingerprint(msg) != 0, "resultFingerprint returned 0");
      int16_t n = r.int16();
      for (int i = 0; i < n && !r.failed(); ++i) {
        r.cstring();
        r.int32();
        r.int16();
        r.int32();
        r.int16();
        r.int32();
        r.int16();
      }
      break;
    }
    case 'D': {  // DataRow
      int16_t n = r.int16();
      for (int i = 0; i < n && !r.failed(); ++i) {
        int32_t len = r.int32();
        if (len > 0) r.bytes(size_t(len));
      }
      break;
    }
    case 'C':  // CommandComplete
      r.cstring();
      break;
    case 't': {  // ParameterDescription
      int16_t n = r.int16();
      for (int i = 0; i < n && !r.failed(); ++i) r.int32();
      break;
    }
    case 'A':  // NotificationResponse
      r.int32();
      r.cstring();
      r.cstring();
      break;
    default:
      break;
  }
}

void driveClientProtocol(std::string_view stream, bool plain_password) {
  tools::ClientProtocol::Login login;
  login.user = "alice";
  login.database = "app";
  // A plain password lets SCRAM derive keys; the md5 secret answers md5 only.
  login.password = plain_password ? "secret" : protocol::md5PasswordSecret("alice", "secret");
  tools::ClientProtocol cp(login);
  std::string out;
  cp.start(out);
  std::string in;
  bool sent_query = false;
  // Chunks of 1..64 bytes, the chunk size taken from the stream itself, so messages split at any
  // point are covered.
  size_t pos = 0;
  while (pos < stream.size()) {
    size_t chunk = 1 + (uint8_t(stream[pos]) % 64);
    in.append(stream.substr(pos, chunk));
    pos += chunk;
    size_t before = in.size();
    out.clear();
    cp.onData(in, out);
    check(in.size() <= before, "ClientProtocol grew its input");
    if (cp.state() == tools::ClientProtocol::State::kFailed) return;
    if (cp.state() == tools::ClientProtocol::State::kReady && !sent_query) {
      cp.sendQuery("SELECT 1", out);
      sent_query = true;
    }
  }
  cp.onEof();
  check(cp.state() == tools::ClientProtocol::State::kFailed, "onEof did not fail the connection");
  check(cp.failure().has_value(), "kFailed without a failure");
}

}  // namespace sluice::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sluice;
  std::string_view in(reinterpret_cast<const char*>(data), size);
  std::string_view rest = in;
  while (auto h = protocol::peekHeader(rest)) {
    if (h->length < 4 || h->total() > rest.size()) break;
    fuzz::decodeServerMessage(h->type, rest.substr(0, h->total()));
    rest.remove_prefix(h->total());
  }
  fuzz::driveClientProtocol(in, !fuzz::hasLargeIterations(in));
  return 0;
}
