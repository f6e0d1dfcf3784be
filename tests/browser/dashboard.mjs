// Drives Debian's headless chromium (playwright-core, no bundled browser) against a running
// node's dashboard. Usage: node dashboard.mjs URL SCREENSHOT REGION...
// Prints one JSON line with what it read; exits 1 with the reason when a check fails.
import { chromium } from "playwright-core";

const [url, shot, ...regions] = process.argv.slice(2);
if (!url || !shot || regions.length === 0) {
  console.error("usage: node dashboard.mjs URL SCREENSHOT REGION...");
  process.exit(2);
}
const executablePath = process.env.TICKMESH_CHROMIUM || "/usr/bin/chromium";
const failures = [];
const check = (ok, what) => { if (!ok) failures.push(what); };

const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1600, height: 1500 } });
  const pageErrors = [];
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") pageErrors.push(m.text()); });
  page.on("response", (r) => { if (r.status() >= 400) pageErrors.push(`HTTP ${r.status()} for ${r.url()}`); });
  await page.goto(url, { waitUntil: "load" });

  // The chart library came from the binary, the page polled, and a chart has points.
  await page.waitForFunction(() => typeof window.Chart === "function", null, { timeout: 30000 });
  await page.waitForFunction(() => {
    const c = window.Chart.getChart("chart-records");
    return window.tickmeshDashboard.polls >= 2 && c && c.data.datasets.some((d) => d.data.length >= 2);
  }, null, { timeout: 60000 });

  const read = () => page.evaluate(() => {
    const out = { regions: {}, points: {}, vwapRows: 0, sources: 0, notice: !document.getElementById("notice").hidden };
    for (const tr of document.querySelectorAll("#regions tbody tr")) {
      const v = (f) => tr.querySelector(`td[data-field="${f}"]`)?.dataset.value;
      out.regions[tr.dataset.region] = {
        state: tr.dataset.state,
        records_in_total: Number(v("records_in_total") ?? NaN),
        records_in_per_s: Number(v("records_in_per_s") ?? NaN),
        messages_out_per_s: Number(v("messages_out_per_s") ?? NaN),
        connections: Number(v("connections") ?? NaN),
        shown: tr.querySelector('td[data-field="records_in_total"]')?.textContent,
      };
    }
    for (const id of ["chart-records", "chart-messages", "chart-latency", "chart-lag", "chart-volume"]) {
      const c = window.Chart.getChart(id);
      out.points[id] = c ? c.data.datasets.reduce((n, d) => n + d.data.length, 0) : -1;
    }
    out.vwapRows = document.querySelectorAll("#vwap tbody tr").length;
    out.sources = document.querySelectorAll("#sources tbody tr").length;
    out.polls = window.tickmeshDashboard.polls;
    return out;
  });

  const first = await read();
  // Read again once every region's displayed counter has moved (or give up after 45 s).
  let second = first;
  const deadline = Date.now() + 45000;
  while (Date.now() < deadline) {
    await page.waitForTimeout(2000);
    second = await read();
    const moved = regions.every((r) => second.regions[r]?.records_in_total > first.regions[r]?.records_in_total);
    if (moved && second.polls >= first.polls + 2) break;
  }

  for (const r of regions) {
    check(second.regions[r] !== undefined, `region ${r} is not listed`);
    check(second.regions[r]?.state === "active", `region ${r} is ${second.regions[r]?.state}, not active`);
    check(second.regions[r]?.records_in_total > first.regions[r]?.records_in_total,
      `region ${r}: records in did not increase (${first.regions[r]?.shown} then ${second.regions[r]?.shown})`);
    check(first.regions[r]?.records_in_per_s > 0 || second.regions[r]?.records_in_per_s > 0,
      `region ${r}: records in per second was never positive`);
  }
  check(second.points["chart-records"] > 0, "the records chart has no data points");
  check(second.points["chart-messages"] > 0, "the messages chart has no data points");
  check(second.points["chart-lag"] > 0, "the replication delay chart has no data points");
  check(second.vwapRows > 0, "no symbol in the VWAP table");
  check(second.points["chart-volume"] > 0, "the volume chart has no bars");
  check(second.sources > 0, "no source in this region's table");
  check(!second.notice, "the page shows the chart.js-missing notice");
  check(pageErrors.length === 0, `page errors: ${pageErrors.join("; ")}`);

  await page.screenshot({ path: shot, fullPage: true });

  // A binary built without npm serves a stand-in for chart.js: the page still shows its
  // live tables, and a notice naming the command to run.
  const bare = await browser.newPage();
  await bare.route("**/dashboard/chart.umd.js", (route) => route.fulfill({
    contentType: "text/javascript",
    body: 'window.TICKMESH_CHART_MISSING = "chart.js is not built into this binary; run `cd gateway/dashboard && npm ci` and rebuild";',
  }));
  await bare.goto(url, { waitUntil: "load" });
  await bare.waitForFunction(() => window.tickmeshDashboard.polls >= 1, null, { timeout: 30000 });
  const fallback = await bare.evaluate(() => ({
    notice: document.getElementById("notice").hidden ? null : document.getElementById("notice").textContent,
    regions: [...document.querySelectorAll("#regions tbody tr")].map((tr) => tr.dataset.region),
  }));
  check(fallback.notice && fallback.notice.includes("npm ci"), `no notice without chart.js: ${JSON.stringify(fallback)}`);
  for (const r of regions) check(fallback.regions.includes(r), `region ${r} missing from the table without chart.js`);
  await bare.close();
  console.log(JSON.stringify({ ok: failures.length === 0, failures, first, second, screenshot: shot }));
} finally {
  await browser.close();
}
process.exit(failures.length === 0 ? 0 : 1);
