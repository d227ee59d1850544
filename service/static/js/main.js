// The page: three views (search, catalog, jobs) chosen by ?view= in the URL, the status banner, keyboard focus.
import { applyCatalogState, initCatalog } from "./catalog.js";
import { applyJobsState, initJobs } from "./jobs.js";
import { initResults } from "./results.js";
import { applySearchState, initSearch } from "./search.js";
import { readState, writeState } from "./state.js";
import { startStatus } from "./status.js";

const VIEWS = ["search", "catalog", "jobs"];

function show(view, { focus = false } = {}) {
  for (const name of VIEWS) document.getElementById(`view-${name}`).hidden = name !== view;
  for (const link of document.querySelectorAll("nav a[data-view]")) {
    if (link.dataset.view === view) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const titles = { search: "Search", catalog: "Catalog", jobs: "Indexing jobs" };
  document.title = `cavsync — ${titles[view]}`;
  if (focus) document.getElementById(`${view}-title`)?.focus();
}

function route({ focus = false } = {}) {
  const state = readState();
  const view = VIEWS.includes(state.view) ? state.view : "search";
  show(view, { focus });
  if (view === "catalog") applyCatalogState(state);
  if (view === "jobs") applyJobsState(state);
  return { view, state };
}

function start() {
  startStatus();
  initResults();
  initCatalog();
  initJobs();
  for (const link of document.querySelectorAll("nav a[data-view]")) {
    link.addEventListener("click", (event) => {
      event.preventDefault();
      writeState({ view: link.dataset.view });
      route({ focus: true });
    });
  }
  window.addEventListener("popstate", () => {
    const { view, state } = route();
    if (view === "search") applySearchState(state);
  });
  route();
  initSearch();
  document.body.dataset.ready = "true";
}

start();
