// Fuzz target: arbitrary bytes as a stream of client (frontend) messages after startup, decoded
// the way sluice reads them: header peeking (protocol::peekHeader), the payload readers
// (protocol::Reader) over each message type's layout, the statement text the diagnostics show
// (diagnostics::statementText) and how much of a message the prepared-statement rewriter asks for
// (Rewriter::clientBytesNeeded). Invariants: readers never read past the payload, and the bytes
// asked for never exceed the message.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "diagnostics/lease_watch.h"
#include "fuzz_util.h"
#include "protocol/prepared_statements.h"
#include "protocol/wire.h"

namespace sluice::fuzz {

void checkView(std::string_view part, std::string_view whole) {
  if (part.empty()) return;
  check(part.data() >= whole.data() && part.data() + part.size() <= whole.data() + whole.size(),
        "a reader returned bytes outside the payload");
}

void decodeClientMessage(char type, std::string_view payload) {
  protocol::Reader r(payload);
  switch (type) {
    case 'Q':  // Query
      checkView(r.cstring(), payload);
      break;
    case 'P': {  // Parse: name, query, int16 count, int32 oids
      checkView(r.cstring(), payload);
      checkView(r.cstring(), payload);
      int16_t n = r.int16();
      for (int i = 0; i < n && !r.failed(); ++i) r.int32();
      break;
    }
    case 'B': {  // Bind: portal, statement, formats, parameters, result formats
      checkView(r.cstring(), payload);
      checkView(r.cstring(), payload);
      int16_t nf = r.int16();
      for (int i = 0; i < nf && !r.failed(); ++i) r.int16();
      int16_t np = r.int16();
      for (int i = 0; i < np && !r.failed(); ++i) {
        int32_t len = r.int32();
        if (len > 0) checkView(r.bytes(size_t(len)), payload);
      }
      int16_t nr = r.int16();
      for (int i = 0; i < nr && !r.failed(); ++i) r.int16();
      break;
    }
    case 'D':  // Describe, Close: 'S' or 'P', name
    case 'C':
      r.byte();
      checkView(r.cstring(), payload);
      break;
    case 'E':  // Execute: portal, max rows
      checkView(r.cstring(), payload);
      r.int32();
      break;
    case 'p': {  // PasswordMessage / SASLInitialResponse / SASLResponse
      protocol::Reader sasl(payload);
      checkView(sasl.cstring(), payload);
      int32_t len = sasl.int32();
      if (len > 0) checkView(sasl.bytes(size_t(len)), payload);
      checkView(r.cstring(), payload);
      break;
    }
    case 'F': {  // FunctionCall: oid, formats, arguments, result format
      r.int32();
      int16_t nf = r.int16();
      for (int i = 0; i < nf && !r.failed(); ++i) r.int16();
      int16_t na = r.int16();
      for (int i = 0; i < na && !r.failed(); ++i) {
        int32_t len = r.int32();
        if (len > 0) checkView(r.bytes(size_t(len)), payload);
      }
      r.int16();
      break;
    }
    default:
      checkView(r.rest(), payload);
      break;
  }
  checkView(r.rest(), payload);
}

}  // namespace sluice::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sluice;
  std::string_view in(reinterpret_cast<const char*>(data), size);
  while (auto h = protocol::peekHeader(in)) {
    if (h->length < 4) break;  // a protocol violation: the session closes the client
    size_t need = protocol::Rewriter::clientBytesNeeded(h->type, h->length);
    fuzz::check(need >= protocol::kHeaderSize && need <= h->total(),
                "clientBytesNeeded outside [header, message]");
    if (h->total() > in.size()) {
      // Incomplete: what the relay would see of a message still arriving.
      fuzz::checkView(diagnostics::statementText(in, 1024), in);
      break;
    }
    std::string_view msg = in.substr(0, h->total());
    std::string_view text = diagnostics::statementText(msg, 1024);
    fuzz::check(text.size() <= 1024, "statementText longer than its cap");
    fuzz::checkView(text, msg);
    fuzz::decodeClientMessage(h->type, msg.substr(protocol::kHeaderSize));
    in.remove_prefix(msg.size());
  }
  return 0;
}
