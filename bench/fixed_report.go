package main

import (
	"fmt"
	"math"
	"strings"
)

// fixedLabel names a fixed-rate fan-out configuration.
func fixedLabel(subs, size int, offered float64) string {
	return fmt.Sprintf("fan-out at a fixed %s deliveries/s, %s subs, %s", shortNum(offered), groupDigits(int64(subs)), fmtSize(size))
}

// fixedOffered returns the offered rate of a configuration (the same for
// every peer), 0 if it was not measured.
func fixedOffered(r *report, subs, size int) float64 {
	for _, f := range r.Fixed {
		if f.Subs == subs && f.Size == size && f.Offered > 0 {
			return f.Offered
		}
	}
	return 0
}

// fixedSummary returns the summary rows of the fixed-rate fan-out.
func fixedSummary(r *report) []summaryRow {
	var rows []summaryRow
	for _, subs := range r.cfg.fanoutSubs {
		for _, size := range r.cfg.sizes {
			offered := fixedOffered(r, subs, size)
			if offered == 0 {
				continue
			}
			wl := fixedLabel(subs, size, offered)
			row := func(metric string, fmtv func(float64) string, v func(f fanoutResult) float64) summaryRow {
				sr := summaryRow{workload: wl, metric: metric, fmtv: fmtv, values: map[string]float64{}, failed: map[string]bool{}}
				for _, f := range r.Fixed {
					if f.Subs == subs && f.Size == size {
						sr.values[f.Lib], sr.failed[f.Lib] = v(f), f.Err != ""
					}
				}
				return sr
			}
			rows = append(rows,
				row("p50 latency ↓", fmtUs, func(f fanoutResult) float64 { return f.P50us }),
				row("p99 latency ↓", fmtUs, func(f fanoutResult) float64 { return f.P99us }),
				row("server CPU µs per delivery ↓", fmtCost, func(f fanoutResult) float64 { return perDelivery(f.ServerCPU, f.Rate) }),
			)
		}
	}
	return rows
}

// fixedMarkdown renders the fixed-rate fan-out section.
func fixedMarkdown(r *report) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	w("## Fan-out at a fixed rate\n\n")
	w("The fan-out above at equal offered load instead of saturation (`-workloads fanout-fixed`): a pacer in the server process publishes to the one channel at a fixed rate, open loop (no window; nothing waits for deliveries), for %.0f s per configuration, %d times (each latency and CPU figure is the median of the repetitions; losses of any count), after an unrecorded warm-up phase. ", r.cfg.fixedDuration.Seconds(), r.cfg.repeat)
	switch {
	case r.cfg.fixedRate > 0:
		w("The offered load is %s deliveries/s (`-fixed-rate`) in every configuration, for every peer. ", fmtRate(r.cfg.fixedRate))
	default:
		w("The offered load of each configuration is the same for every peer: %g × the slowest peer's saturated deliveries/s in this run's fan-out of the same configuration (`-fixed-fraction`; \"offered from\" names that peer), or %s deliveries/s where the saturated fan-out did not run. ", r.cfg.fixedFraction, fmtRate(defaultFixedRate))
	}
	w("Messages per second = offered deliveries/s ÷ subscribers. Each payload is stamped with its scheduled publish time, not the time of the publish call, so a pacer held up by a busy server adds to the latency rather than hiding it (no coordinated omission); \"pacer lag\" is how late the publish calls were against the schedule (p50 / p99: the Go timer's wake-up, a busy server, or a previous publish call that blocked, as a full broadcast channel does), the part of the latency spent before the peer got the message. Latency is scheduled publish to receive by the client; achieved deliveries/s = deliveries ÷ (publishing time + the time until the last delivery); server µs/delivery is the server process's CPU over the same time ÷ deliveries. Loss and order are checked as in the saturated fan-out.\n\n")
	w("| peer | subscribers | payload | offered /s | offered from | achieved /s | messages | p50 | p90 | p99 | max | mean | pacer lag | lost | server cores | server µs/delivery | client cores | other cores | server writes /1k | note |\n|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
	for _, f := range r.Fixed {
		w("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s / %s | %d | %.2f | %s | %.2f | %.2f | %.0f | %s |\n",
			f.Lib, groupDigits(int64(f.Subs)), fmtSize(f.Size), fmtRate(f.Offered), f.OfferedFrom, fmtRate(f.Rate), groupDigits(f.Published),
			fmtUs(f.P50us), fmtUs(f.P90us), fmtUs(f.P99us), fmtUs(f.MaxUs), fmtUs(f.MeanUs), fmtUs(f.PacerLagP50us), fmtUs(f.PacerLagP99us),
			f.Lost, f.ServerCPU, fmtCost(perDelivery(f.ServerCPU, f.Rate)), f.ClientCPU, f.OtherCPU, f.WritesPerK, f.Err)
	}
	w("\n")
	return b.String()
}

// stagesMarkdown renders where chart's latency goes: the hub's
// accepted-to-written beside the clients' publish-to-receive, for every
// measurement that has both.
func stagesMarkdown(r *report) string {
	var rows strings.Builder
	row := func(workload string, h *hubStage, deliveries int64, p50, p99, mean float64) {
		if h == nil || h.Count == 0 {
			return
		}
		share := "–"
		if mean > 0 {
			share = fmt.Sprintf("%.0f%%", 100*h.MeanUs/mean)
		}
		fmt.Fprintf(&rows, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", workload, groupDigits(deliveries),
			fmtUs(h.P50us), fmtUs(h.P99us), fmtUs(h.MeanUs), fmtUs(p50), fmtUs(p99), fmtUs(mean), fmtUs(math.Max(mean-h.MeanUs, 0)), share)
	}
	for _, f := range r.Fanout {
		if f.Lib == "chart" {
			row(fmt.Sprintf("fan-out, saturated, %s subs, %s", groupDigits(int64(f.Subs)), fmtSize(f.Size)), f.Hub, f.Deliveries, f.P50us, f.P99us, f.MeanUs)
		}
	}
	for _, f := range r.Fixed {
		if f.Lib == "chart" {
			row(fixedLabel(f.Subs, f.Size, f.Offered), f.Hub, f.Deliveries, f.CallP50us, f.CallP99us, f.CallMeanUs)
		}
	}
	for _, f := range r.Rooms {
		if f.Lib == "chart" && f.Kind == "" {
			row(fmt.Sprintf("rooms, %s conns, %g msg/s/user", groupDigits(int64(f.Conns)), f.PerUserRate), f.Hub, f.Deliveries, f.P50us, f.P99us, f.MeanUs)
		}
	}
	if rows.Len() == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString("## Where chart's latency goes\n\n")
	b.WriteString("Per delivery, chart's latency splits into the hub's part, **accepted → written** (from the moment the hub accepted the message, in `Publish` or on reading a client's message, to the moment the recipient connection's writer wrote it to the socket: `Hub.Stats().Delivery`, which the bench's chart server serves on `/ctl/delivery`, taken before and after each measurement and subtracted), and the rest, **written → received** (socket buffers, the kernel, and the client process being scheduled to read). The clients measure the whole, **publish → received**, from the time of the publish call: the server's, just before it (fan-out; at a fixed rate the scheduled time plus the pacer's lag, both in the payload, so unlike the fixed-rate table this leaves out the pacer's lag), or the sending client's (rooms, which also counts the client's send and the server's read). Quantiles of the hub stage are interpolated inside chart's histogram buckets (100 µs, 250 µs, 500 µs, 1 ms, 2.5 ms … 10 s), so they are only as precise as a bucket is narrow; its mean is exact (sum ÷ count). Quantiles do not subtract, means do: \"rest (mean)\" is the mean publish → received less the mean accepted → written, and \"hub share\" is the hub's part of the mean.\n\n")
	b.WriteString("| measurement | deliveries | accepted → written p50 | p99 | mean | publish → received p50 | p99 | mean | rest (mean) | hub share |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	b.WriteString(rows.String())
	b.WriteString("\n")
	return b.String()
}

// equalLoadTargets returns issue 15's equal-load target rows: in the
// fixed-rate fan-out and in rooms, chart's p50, p99 and server CPU per
// delivery against the best peer's (lowest among peers that lost nothing),
// as the worst ratio over the configurations.
func equalLoadTargets(r *report) string {
	// key names a configuration, shared by the peers' points.
	type point struct {
		lib, key, err  string
		p50, p99, cost float64
	}
	var pts []point
	for _, f := range r.Fixed {
		pts = append(pts, point{f.Lib, fmt.Sprintf("fixed-rate fan-out %s subs, %s", groupDigits(int64(f.Subs)), fmtSize(f.Size)), f.Err, f.P50us, f.P99us, perDelivery(f.ServerCPU, f.Rate)})
	}
	for _, f := range r.Rooms {
		if f.Kind == "" {
			pts = append(pts, point{f.Lib, fmt.Sprintf("rooms %g msg/s/user", f.PerUserRate), f.Err, f.P50us, f.P99us, perDelivery(f.ServerCPU, f.Rate)})
		}
	}
	var b strings.Builder
	for _, m := range []struct {
		name string
		v    func(point) float64
	}{
		{"p50 latency", func(p point) float64 { return p.p50 }},
		{"p99 latency", func(p point) float64 { return p.p99 }},
		{"server CPU per delivery", func(p point) float64 { return p.cost }},
	} {
		worst, where, n := 0.0, "", 0
		for _, c := range pts {
			if c.lib != "chart" || m.v(c) <= 0 {
				continue
			}
			best := math.Inf(1)
			for _, p := range pts {
				if p.lib != "chart" && p.key == c.key && p.err == "" && m.v(p) > 0 {
					best = math.Min(best, m.v(p))
				}
			}
			if math.IsInf(best, 1) {
				continue
			}
			n++
			if ratio := m.v(c) / best; ratio > worst || c.err != "" {
				worst, where = math.Max(ratio, worst), c.key
				if c.err != "" {
					worst = math.Inf(1)
				}
			}
		}
		if n == 0 {
			continue
		}
		measured := fmt.Sprintf("worst %.2f× the best peer (%s)", worst, where)
		if math.IsInf(worst, 1) {
			measured = "chart lost messages (" + where + ")"
		}
		fmt.Fprintf(&b, "| %s ≤ best peer at equal load (fixed-rate fan-out and rooms, every configuration) | %s | %s |\n", m.name, measured, map[bool]string{true: "yes", false: "**no**"}[worst <= 1])
	}
	return b.String()
}
