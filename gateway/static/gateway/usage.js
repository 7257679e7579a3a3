// Charts of the admin's "Usage and cost" page, drawn with the vendored Chart.js.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("usage-data").textContent);
  var keys = JSON.parse(document.getElementById("usage-keys").textContent);
  var palette = ["#417690", "#e07b39", "#5aa469", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974", "#64b5cd"];
  var base = {
    animation: false,
    responsive: true,
    maintainAspectRatio: false,
    interaction: { mode: "index", intersect: false },
  };

  function draw(id, config, points) {
    var canvas = document.getElementById(id);
    if (!canvas) return;
    new Chart(canvas, config);
    // Read by the browser tests: the chart exists and how many points it shows.
    canvas.dataset.rendered = "true";
    canvas.dataset.points = String(points);
  }

  function stacked(id, figure) {
    var names = Object.keys(data.series.groups);
    var total = 0;
    var datasets = names.map(function (name, i) {
      var values = data.series.groups[name][figure];
      values.forEach(function (v) { total += v; });
      return { label: name, data: values, backgroundColor: palette[i % palette.length], stack: "s" };
    });
    draw(id, {
      type: "bar",
      data: { labels: data.series.periods.map(function (p) { return p.slice(0, 16).replace("T", " "); }), datasets: datasets },
      options: Object.assign({}, base, { scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true } } }),
    }, data.series.periods.length && total ? data.series.periods.length : 0);
  }

  stacked("chart-requests", "requests");
  stacked("chart-tokens", "tokens");
  stacked("chart-cost", "cost_usd");

  draw("chart-keys", {
    type: "bar",
    data: {
      labels: keys.map(function (k) { return k.key; }),
      datasets: [{ label: "USD", data: keys.map(function (k) { return Number(k.cost_usd); }), backgroundColor: palette[0] }],
    },
    options: Object.assign({}, base, { indexAxis: "y", plugins: { legend: { display: false } } }),
  }, keys.length);

  data.budgets.forEach(function (budget, i) {
    var labels = budget.points.map(function (p) { return p.period.slice(0, 16).replace("T", " "); });
    draw("chart-budget-" + i, {
      type: "line",
      data: {
        labels: labels,
        datasets: [
          { label: "spent (USD)", data: budget.points.map(function (p) { return Number(p.spent_usd); }), borderColor: palette[0], fill: false, stepped: true },
          { label: "limit (USD)", data: labels.map(function () { return Number(budget.limit_usd); }), borderColor: palette[3], borderDash: [6, 4], pointRadius: 0 },
        ],
      },
      options: Object.assign({}, base, { scales: { y: { beginAtZero: true } } }),
    }, budget.points.length);
  });
})();
