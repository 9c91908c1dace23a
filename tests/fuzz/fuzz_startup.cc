// Fuzz target: arbitrary bytes as the first packet of a connection (StartupMessage, SSLRequest,
// GSSENCRequest, CancelRequest or garbage), parsed by protocol::parseStartupPacket the way
// ClientSession::processStartup calls it: the int32 length first (at most kMaxStartupPacket), then
// the whole packet. Invariants: a parsed StartupMessage or CancelRequest re-encodes to the same
// bytes (appendStartup / appendCancelRequest) and parses back to the same values.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <variant>

#include "fuzz_util.h"
#include "protocol/wire.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sluice;
  std::string_view in(reinterpret_cast<const char*>(data), size);
  // As the session does: read the length, refuse what is out of range, parse exactly that many.
  if (in.size() >= 4) {
    uint32_t len = protocol::readU32(in.data());
    if (len >= 8 && len <= protocol::kMaxStartupPacket && len <= in.size()) {
      protocol::parseStartupPacket(in.substr(0, len));
    }
  }
  // And the parser on its own, whatever the length says.
  protocol::StartupPacket p = protocol::parseStartupPacket(in);
  if (auto* m = std::get_if<protocol::StartupMessage>(&p)) {
    fuzz::check((m->version >> 16) == 3, "StartupMessage with a version other than 3.x");
    if (m->version == protocol::kProtocolVersion3) {
      std::string out;
      protocol::appendStartup(out, m->params);
      fuzz::check(out == in, "StartupMessage does not re-encode to the same bytes");
    }
    for (const auto& [k, v] : m->params) {
      fuzz::check(!k.empty(), "empty parameter name");
      fuzz::check(m->find(k) != nullptr, "find() misses a parameter");
    }
  } else if (auto* c = std::get_if<protocol::CancelRequest>(&p)) {
    std::string out;
    protocol::appendCancelRequest(out, c->pid, c->key);
    fuzz::check(out == in, "CancelRequest does not re-encode to the same bytes");
  } else if (std::holds_alternative<protocol::SslRequest>(p) ||
             std::holds_alternative<protocol::GssEncRequest>(p)) {
    fuzz::check(in.size() == 8, "SSLRequest/GSSENCRequest of a length other than 8");
  } else {
    fuzz::check(!std::get<protocol::StartupError>(p).message.empty(), "StartupError without text");
  }
  return 0;
}
