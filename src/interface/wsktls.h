/*
 * wsktls.h: TLS 1.3 channels over Winsock Kernel, for kernel-mode consumer drivers.
 *
 * Include after <wdm.h> (or <ntddk.h>) and <wsk.h>. The Rust twin of this header is
 * wsktls's src/nt/wsktls.rs; tests/layout.rs compiles static asserts of every size,
 * offset, member type, prototype and value below against it.
 *
 * Getting the dispatch table (IRQL == PASSIVE_LEVEL):
 *   1. Find the interface: IoRegisterPlugPlayNotification(
 *      EventCategoryDeviceInterfaceChange,
 *      PNPNOTIFY_DEVICE_INTERFACE_INCLUDE_EXISTING_INTERFACES,
 *      &GUID_DEVINTERFACE_WSKTLS, ...), or IoGetDeviceInterfaces(&GUID_DEVINTERFACE_WSKTLS,
 *      NULL, 0, &List).
 *   2. Open it: IoGetDeviceObjectPointer(&SymbolicLinkName, FILE_READ_DATA, &FileObject,
 *      &DeviceObject).
 *   3. Send DeviceObject one IRP_MJ_INTERNAL_DEVICE_CONTROL, IOCTL_WSKTLS_GET_PROVIDER
 *      (METHOD_NEITHER): input, a WSKTLS_PROVIDER_REQUEST at
 *      Parameters.DeviceIoControl.Type3InputBuffer (InputBufferLength = its size); output,
 *      a WSKTLS_PROVIDER_NPI at Irp->UserBuffer (OutputBufferLength = its size).
 *      IoBuildDeviceIoControlRequest(IOCTL_WSKTLS_GET_PROVIDER, DeviceObject, &Request,
 *      sizeof Request, &Npi, sizeof Npi, TRUE, &Event, &IoStatus) builds exactly that;
 *      set IoGetNextIrpStackLocation(Irp)->FileObject = FileObject, then IoCallDriver.
 *   4. Use Npi.Provider and Npi.Dispatch while you hold the FileObject reference; close
 *      every channel, wait for its IRPs, and only then ObDereferenceObject(FileObject).
 *
 * Every call (Connect, Send, Receive, Disconnect, Close, Query) may be made at
 * IRQL <= DISPATCH_LEVEL; the work they start runs at PASSIVE_LEVEL inside wsktls.
 *
 * The IRP calls follow WskSend's contract. The caller owns the IRP: allocate it with one
 * stack location for wsktls (IoAllocateIrp(1, FALSE), or more if you keep your own), set
 * your completion routine with IoSetCompletionRoutine, and pass it. The call returns
 * STATUS_PENDING and completes the IRP later, or returns any other status after it has
 * already completed the IRP with that same status (your completion routine has run).
 * Either way the outcome is in the completion routine; do not touch the IRP until it runs.
 * A call with a closed or unknown channel handle gets STATUS_INVALID_HANDLE; unsupported
 * Flags, STATUS_NOT_SUPPORTED. A channel's failure is sticky: the requests pending when it
 * fails complete with its status (below), later Send, Receive and Disconnect calls get
 * STATUS_FILE_FORCED_CLOSED, and the consumer must Close it.
 */
#pragma once
#ifndef WSKTLS_H
#define WSKTLS_H

#ifndef WSKAPI
#error "wsktls.h: include <wsk.h> first"
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* {59DF11A2-7D70-4712-9894-1CA0DB32F2E1}: the device interface class wsktls enables while
   its device is started. In one source file, #include <initguid.h> just before this
   header to define it, as for any Windows GUID. */
DEFINE_GUID(GUID_DEVINTERFACE_WSKTLS,
  0x59df11a2, 0x7d70, 0x4712, 0x98, 0x94, 0x1c, 0xa0, 0xdb, 0x32, 0xf2, 0xe1);

/* Interface versions, as MAKE_WSK_VERSION. */
#define WSKTLS_MAKE_VERSION(Mj, Mn) ((USHORT)((Mj) << 8) | (USHORT)((Mn) & 0xff))
#define WSKTLS_VERSION_1_0 WSKTLS_MAKE_VERSION(1, 0)

/* The one internal device-control request, kernel-mode senders only: input
   (Type3InputBuffer) a WSKTLS_PROVIDER_REQUEST, output (Irp->UserBuffer) a
   WSKTLS_PROVIDER_NPI. */
/* The device type of wsktls's control codes, from the range left to third parties. */
#define FILE_DEVICE_WSKTLS 0x000087A5u  /* unsigned: CTL_CODE shifts it into bit 31 */

#define IOCTL_WSKTLS_GET_PROVIDER \
  CTL_CODE(FILE_DEVICE_WSKTLS, 0x801, METHOD_NEITHER, FILE_ANY_ACCESS)

/*
 * wsktls's own statuses: severity error, customer bit, facility 0x7A5. TLS failures Windows
 * has a code for come back as Schannel's SEC_E_* values (winerror.h; NT_SUCCESS is false):
 *   SEC_E_WRONG_PRINCIPAL    certificate not valid for ServerName
 *   SEC_E_UNTRUSTED_ROOT     chain does not lead to one of TrustAnchors
 *   SEC_E_CERT_EXPIRED       certificate expired or not yet valid
 *   SEC_E_CERT_UNKNOWN       any other certificate problem; the server refused ours
 *   SEC_E_ALGORITHM_MISMATCH no common suite, group or version
 *   SEC_E_MESSAGE_ALTERED    a record failed authentication (tampered)
 *   SEC_E_ILLEGAL_MESSAGE    the peer broke the protocol
 *   SEC_E_INTERNAL_ERROR     wsktls's own failure (no randomness, ...)
 * and transport failures as WSK's (STATUS_CONNECTION_REFUSED, STATUS_CONNECTION_RESET,
 * STATUS_IO_TIMEOUT for a connect or handshake timeout, ...).
 */
/* The server's public key does not hash to PinSha256. */
#define STATUS_WSKTLS_PIN_MISMATCH ((NTSTATUS)0xE7A50001L)
/* TCP closed without close_notify: the stream may have been cut short. */
#define STATUS_WSKTLS_TRUNCATED    ((NTSTATUS)0xE7A50002L)
/* The peer sent a fatal alert (other than those mapped to SEC_E_* above). */
#define STATUS_WSKTLS_PEER_ALERT   ((NTSTATUS)0xE7A50003L)

/* Opaque handles. A channel handle is a handle, not a pointer: a closed or forged one is
   refused with STATUS_INVALID_HANDLE, never followed. */
typedef struct _WSKTLS_PROVIDER WSKTLS_PROVIDER, *PWSKTLS_PROVIDER;
typedef struct _WSKTLS_CHANNEL WSKTLS_CHANNEL, *PWSKTLS_CHANNEL;

/* A counted byte string the caller owns; Connect copies what it keeps before it returns. */
typedef struct _WSKTLS_BLOB {
  const UCHAR *Data;
  ULONG Length;
  ULONG Reserved;                    /* zero */
} WSKTLS_BLOB, *PWSKTLS_BLOB;

/* WSKTLS_CONNECT_PARAMETERS.Suites bits; zero offers all three. */
#define WSKTLS_SUITE_AES_128_GCM_SHA256       0x00000001
#define WSKTLS_SUITE_AES_256_GCM_SHA384       0x00000002
#define WSKTLS_SUITE_CHACHA20_POLY1305_SHA256 0x00000004

/* What Connect needs. Connect copies all of it (and everything it points to) before it
   returns. Zero in RecordSize, SendBudget, ReceiveBuffer or a timeout takes wsktls's
   default. */
typedef struct _WSKTLS_CONNECT_PARAMETERS {
  ULONG Size;                        /* sizeof(WSKTLS_CONNECT_PARAMETERS) */
  USHORT Version;                    /* WSKTLS_VERSION_1_0 */
  USHORT Reserved;                   /* zero */
  const struct sockaddr *RemoteAddress; /* a SOCKADDR_IN or SOCKADDR_IN6, by its family */
  WSKTLS_BLOB ServerName;            /* DNS name (SNI + certificate check) or IP literal;
                                        ASCII, no NUL needed */
  const WSKTLS_BLOB *TrustAnchors;   /* TrustAnchorCount DER root certificates */
  const UCHAR *PinSha256;            /* NULL, or 32 bytes: SHA-256 of the server's
                                        SubjectPublicKeyInfo */
  const WSKTLS_BLOB *ClientChain;    /* client certificate chain, leaf first, DER ... */
  WSKTLS_BLOB ClientKey;             /* ... and its PKCS#8 key, DER: both or neither */
  const WSKTLS_BLOB *Alpn;           /* ALPN protocols, most preferred first */
  ULONG TrustAnchorCount;            /* at least one */
  ULONG ClientChainCount;
  ULONG AlpnCount;
  ULONG Suites;                      /* WSKTLS_SUITE_* bits */
  ULONG RecordSize;                  /* most plaintext bytes per record sent: 256..16384;
                                        a full record carries up to 15 fewer (whole AEAD
                                        blocks) */
  ULONG SendBudget;                  /* sealed bytes in flight at most; zero follows the
                                        socket's ideal send backlog */
  ULONG ReceiveBuffer;               /* bytes of records kept for a consumer not
                                        receiving: 32768 (the default) .. 16 MiB */
  ULONG ConnectTimeoutMs;
  ULONG HandshakeTimeoutMs;
  ULONG Reserved2;                   /* zero */
} WSKTLS_CONNECT_PARAMETERS, *PWSKTLS_CONNECT_PARAMETERS;

/* Query's information classes (passed as a ULONG). */
typedef enum _WSKTLS_INFORMATION_CLASS {
  WskTlsInfoSession = 1,             /* WSKTLS_SESSION_INFO */
  WskTlsInfoCounters = 2             /* WSKTLS_COUNTERS */
} WSKTLS_INFORMATION_CLASS;

/* WskTlsInfoSession: what the handshake negotiated. */
typedef struct _WSKTLS_SESSION_INFO {
  USHORT ProtocolVersion;            /* 0x0304: TLS 1.3 */
  USHORT CipherSuite;                /* IANA value: 0x1301, 0x1302 or 0x1303 */
  UCHAR AlpnLength;                  /* 0: no ALPN protocol chosen */
  UCHAR Alpn[255];
  UCHAR PeerCertificateSha256[32];
} WSKTLS_SESSION_INFO, *PWSKTLS_SESSION_INFO;

/* WskTlsInfoCounters: the channel's counters since it opened. */
typedef struct _WSKTLS_COUNTERS {
  ULONGLONG BytesSent;
  ULONGLONG RecordsSent;
  ULONGLONG KeyUpdatesSent;
  ULONGLONG BytesReceived;
  ULONGLONG RecordsReceived;
  ULONGLONG KeyUpdatesReceived;
  ULONGLONG InFlightBytes;
  ULONGLONG PeakInFlightBytes;
  ULONGLONG SendBudget;
  ULONGLONG BufferedBytes;
} WSKTLS_COUNTERS, *PWSKTLS_COUNTERS;

/* Connect: connects to RemoteAddress and runs the TLS 1.3 handshake; IRQL <=
   DISPATCH_LEVEL. *Channel is written before the IRP completes with success, and only
   then is it valid. */
typedef NTSTATUS (WSKAPI *PFN_WSKTLS_CONNECT)(
  PWSKTLS_PROVIDER Provider, const WSKTLS_CONNECT_PARAMETERS *Parameters,
  PWSKTLS_CHANNEL *Channel, PIRP Irp);

/* Send: as WskSend; IRQL <= DISPATCH_LEVEL. The IRP completes once all of Buffer's bytes
   are on the wire (IoStatus.Information = those plaintext bytes); sends complete in order.
   Flags: WSK_FLAG_NODELAY only. After Disconnect: STATUS_INVALID_DEVICE_STATE. */
typedef NTSTATUS (WSKAPI *PFN_WSKTLS_SEND)(
  PWSKTLS_CHANNEL Channel, PWSK_BUF Buffer, ULONG Flags, PIRP Irp);

/* Receive: as WskReceive; IRQL <= DISPATCH_LEVEL. Completes when at least one byte is in
   Buffer (all of it with WSK_FLAG_WAITALL, the only flag). Success with 0 bytes is the
   peer's close_notify; an empty Buffer is STATUS_INVALID_PARAMETER. */
typedef NTSTATUS (WSKAPI *PFN_WSKTLS_RECEIVE)(
  PWSKTLS_CHANNEL Channel, PWSK_BUF Buffer, ULONG Flags, PIRP Irp);

/* Disconnect: sends close_notify after the queued data, then disconnects TCP gracefully;
   IRQL <= DISPATCH_LEVEL. Flags: 0. */
typedef NTSTATUS (WSKAPI *PFN_WSKTLS_DISCONNECT)(
  PWSKTLS_CHANNEL Channel, ULONG Flags, PIRP Irp);

/* Close: always allowed, also after a failure; IRQL <= DISPATCH_LEVEL. Requests still
   pending complete with STATUS_CANCELLED. The handle is invalid from the call on. */
typedef NTSTATUS (WSKAPI *PFN_WSKTLS_CLOSE)(PWSKTLS_CHANNEL Channel, PIRP Irp);

/* Query: synchronous, no IRP; IRQL <= DISPATCH_LEVEL. Fills Buffer (Length bytes) with
   InformationClass's structure; *ReturnLength receives the bytes written. */
typedef NTSTATUS (WSKAPI *PFN_WSKTLS_QUERY)(
  PWSKTLS_CHANNEL Channel, ULONG InformationClass, PVOID Buffer, ULONG Length,
  PULONG ReturnLength);

/* The dispatch table: valid while the FileObject it came through is referenced. */
typedef struct _WSKTLS_DISPATCH {
  ULONG Size;                        /* sizeof(WSKTLS_DISPATCH) */
  USHORT Version;
  USHORT Reserved;
  PFN_WSKTLS_CONNECT Connect;
  PFN_WSKTLS_SEND Send;
  PFN_WSKTLS_RECEIVE Receive;
  PFN_WSKTLS_DISCONNECT Disconnect;
  PFN_WSKTLS_CLOSE Close;
  PFN_WSKTLS_QUERY Query;
} WSKTLS_DISPATCH, *PWSKTLS_DISPATCH;

/* IOCTL_WSKTLS_GET_PROVIDER's input: the version the consumer was built against. */
typedef struct _WSKTLS_PROVIDER_REQUEST {
  ULONG Size;                        /* sizeof(WSKTLS_PROVIDER_REQUEST) */
  USHORT Version;                    /* WSKTLS_VERSION_1_0 */
  USHORT Reserved;                   /* zero */
} WSKTLS_PROVIDER_REQUEST, *PWSKTLS_PROVIDER_REQUEST;

/* IOCTL_WSKTLS_GET_PROVIDER's output: the provider handle and the dispatch table. */
typedef struct _WSKTLS_PROVIDER_NPI {
  ULONG Size;                        /* sizeof(WSKTLS_PROVIDER_NPI) */
  USHORT Version;                    /* the version granted (the one asked for) */
  USHORT Reserved;
  PWSKTLS_PROVIDER Provider;
  const WSKTLS_DISPATCH *Dispatch;
} WSKTLS_PROVIDER_NPI, *PWSKTLS_PROVIDER_NPI;

#ifdef __cplusplus
}
#endif

#endif /* WSKTLS_H */
