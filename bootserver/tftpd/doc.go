// Package tftpd is the boot server's read-only TFTP server: it hands the firmware its network
// boot program (ipxe.efi, undionly.kpxe, …) from a directory and from generated files.
//
// # Design
//
// pin/tftp/v3 (v3.2.0) is the base and serves RFC 1350 transfers with blksize (RFC 2348) and
// tsize (RFC 2349). It does not know windowsize (RFC 7440) — it drops the option from its OACK —
// and it cannot be hooked: its read handler is not shown the request's options. So a request
// loop of this package owns the server port and sits in front of it:
//
//   - it parses every datagram (parseRequest; fuzzed by FuzzRequest), drops and counts what is not
//     a valid request, refuses write requests (ERROR 2), unknown modes (ERROR 4) and names that
//     are not plain relative paths (ERROR 2), and looks the file up (ERROR 1 if missing);
//   - a read request that asks for windowsize (OVMF's do: "blksize 1468 windowsize 4") is served
//     by this package's RFC 7440 sender (window.go), on a socket of its own;
//   - any other read request is rewritten to the options pin/tftp understands, blksize already
//     clamped, and handed to pin/tftp through a net.PacketConn of this package (pinConn). pin/tftp
//     opens its own socket per transfer, as usual, and reads the file through this package's handler.
//
// Files come from an os.Root (Config.Dir: "..", absolute paths and symlinks that leave the
// directory are refused) or an fs.FS, plus Config.Files, generated per request by an Opener.
//
// # OVMF's tsize probe
//
// OVMF sends "RRQ tsize 0 blksize 1468 windowsize 4", reads the size from the OACK, answers it with
// ERROR 8 and asks again without tsize. A transfer the client ends with ERROR is logged at Debug
// and counted in pxejoin_tftp_client_aborts_total, not in pxejoin_tftp_errors_total; it produces
// no OnEvent call when no data had been sent.
//
// # RFC 7440 sender
//
// The sender sends up to windowsize DATA blocks, then waits for an ACK. An ACK for a block of the
// window not yet acknowledged (the window's last block, or the last block the client got in order
// before a gap) moves the window: the next one starts right after that block. ACKs for blocks
// already acknowledged (duplicates) are ignored, so that a duplicated ACK never makes the window
// go out twice. When no new ACK comes within Config.Timeout the window is sent again from the
// block after the last acknowledged one, up to Config.Retries times. A window's blocks are kept in
// memory (windowsize × blksize, at most 64 × 65464 bytes with the defaults), so any io.Reader can
// be sent, generated files included.
//
// # Deviations and choices
//
//   - Block numbers wrap from 65535 to 0 (not to 1) in files of more than 65535 blocks, as
//     tftp-hpa, dnsmasq, atftpd and pin/tftp do; RFC 1350 leaves it open. Inside, the sender counts
//     blocks with 64 bits, and windows are at most 1024 blocks so the 16-bit number is never
//     ambiguous.
//   - windowsize is capped at Config.MaxWindowSize (default 64): the OACK says the lower value,
//     which RFC 7440 allows. blksize is capped at Config.MaxBlockSize and at the MTU of the
//     interface the request came in on (minus IP, UDP and TFTP headers), so DATA is not
//     fragmented; the OACK says the lower value (RFC 2348 allows it). Valid blksize values are
//     8..65464; a request with blksize below 512 is served by the RFC 7440 sender because
//     pin/tftp ignores such values and would send 512-byte blocks the client did not agree to.
//   - Options other than blksize, tsize and windowsize (timeout, multicast, …) are not
//     acknowledged, which RFC 2347 defines as declining them. Option names are matched without
//     regard to case; a repeated option keeps its first value; empty trailing fields (padding
//     some PXE ROMs add) are ignored.
//   - Names are relative slash-separated paths: a leading "/", "." or ".." elements, empty
//     elements, backslashes and control characters are refused with ERROR 2 — "/ipxe.efi" is
//     refused; configure DHCP's file name without the slash.
//   - Errors for refused requests (ERROR 1/2/4) are sent from the server port, not from a new
//     transfer ID; no transfer exists yet, and clients take the first answer from any port.
//   - Transfers that pin/tftp serves answer from the address the kernel picks for the route to
//     the client (pin/tftp learns the request's destination address only when it owns the
//     socket); RFC 7440 transfers answer from the address the request was sent to. On a boot
//     network with one server address both are the same.
//   - pin/tftp answers every failure with ERROR 1 (a file that vanished between the request loop's
//     check and the open, a client's ERROR), and answers a client's ERROR with an ERROR of its
//     own; it is harmless, and the request loop has already sent the right codes for the usual
//     refusals.
//   - tsize in netascii mode is the file's size before conversion (as pin/tftp does).
//   - Requests past Config.MaxTransfers, or past Config.MaxTransfersPerClient for their client's
//     address, are dropped, not refused: the client's retransmission gets through once a transfer
//     ends. The per-address cap keeps one flooding address from taking every transfer.
//
// The listening socket's network namespace is the transfers' too, even when the caller made the
// socket inside another namespace (ServeConn; see inSocketNetns): tests run the server in a
// namespace of their own.
package tftpd
