package tftpd

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the server's Prometheus collectors, all under pxejoin_tftp_.
type metrics struct {
	requests    *prometheus.CounterVec // op: read, write
	transfers   *prometheus.CounterVec // sender: pin, window; result: done, failed, aborted, shutdown
	bytesSent   prometheus.Counter
	retransmits prometheus.Counter
	errors      *prometheus.CounterVec // kind: see errorKinds
	aborts      prometheus.Counter
	inFlight    prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pxejoin_tftp_requests_total",
			Help: "TFTP requests received on the server port, by opcode (read, write).",
		}, []string{"op"}),
		transfers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pxejoin_tftp_transfers_total",
			Help: "TFTP transfers ended, by sender (pin: pin/tftp lockstep; window: RFC 7440) and result " +
				"(done, failed, aborted by the client, shutdown).",
		}, []string{"sender", "result"}),
		bytesSent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pxejoin_tftp_sent_bytes_total",
			Help: "File bytes sent by TFTP transfers (each byte once, retransmissions not counted).",
		}),
		retransmits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pxejoin_tftp_retransmitted_packets_total",
			Help: "DATA packets the RFC 7440 sender sent again after a timeout or a partial ACK.",
		}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pxejoin_tftp_errors_total",
			Help: "Server-side TFTP errors and dropped packets, by kind. Aborts by clients are not counted here.",
		}, []string{"kind"}),
		aborts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pxejoin_tftp_client_aborts_total",
			Help: "Transfers a client ended with an ERROR packet (OVMF does so after its tsize probe).",
		}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pxejoin_tftp_transfers_in_flight",
			Help: "TFTP transfers under way.",
		}),
	}
	for _, op := range []string{"read", "write"} {
		m.requests.WithLabelValues(op)
	}
	for _, k := range errorKinds {
		m.errors.WithLabelValues(k)
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.requests, m.transfers, m.bytesSent, m.retransmits,
		m.errors, m.aborts, m.inFlight} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("tftpd: registering metrics (one Server per registerer): %w", err)
		}
	}
	return m, nil
}
