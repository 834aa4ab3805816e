// The demo's catalogue: 20 shows with distinct titles and 4–8 episodes each, generated (no
// outside assets).
// Show ids are `s01`…`s20`; episode ids are `<showId>e<NN>`, e.g. `s03e02`.

export interface Episode {
  id: string;
  showId: string;
  number: number;
  title: string;
  /** Length in seconds. */
  duration: number;
}

export interface Show {
  id: string;
  title: string;
  genre: string;
  year: number;
  /** Two colours for the generated artwork. */
  colors: [string, string];
  episodes: Episode[];
}

const FIRST = ["Midnight", "Silver", "Hidden", "Broken", "Electric", "Northern", "Paper", "Crimson", "Quiet", "Wild"];
const SECOND = ["Harbor", "Signal", "Kingdom", "Orchard", "Protocol", "Frontier", "Lanterns", "Archive", "Tides", "Circuit"];
const GENRES = ["Drama", "Thriller", "Comedy", "Sci-Fi", "Documentary", "Mystery"];
const WORDS = ["Arrival", "The Offer", "Crossing", "Static", "Old Friends", "Low Tide", "Blackout", "Return", "Lines", "Homecoming"];

function rand(seed: number) {
  let s = seed;
  return () => {
    s = (s * 1103515245 + 12345) % 2147483648;
    return s / 2147483648;
  };
}

export const SHOWS: Show[] = Array.from({ length: 20 }, (_, i) => {
  const r = rand(i + 7);
  const id = `s${String(i + 1).padStart(2, "0")}`;
  const count = 4 + Math.floor(r() * 5);
  const hue = Math.floor(r() * 360);
  return {
    id,
    // The second word steps by 3 (coprime with 10, so the first ten are a permutation) and
    // moves one further for the second ten: show i and i + 10 share a first word, never a title.
    title: `${FIRST[i % FIRST.length]} ${SECOND[(i * 3 + Math.floor(i / FIRST.length)) % SECOND.length]}`,
    genre: GENRES[i % GENRES.length],
    year: 2015 + Math.floor(r() * 11),
    colors: [`hsl(${hue} 70% 45%)`, `hsl(${(hue + 60) % 360} 80% 25%)`],
    episodes: Array.from({ length: count }, (_, e) => ({
      id: `${id}e${String(e + 1).padStart(2, "0")}`,
      showId: id,
      number: e + 1,
      title: WORDS[(i + e) % WORDS.length],
      duration: 60 * (20 + Math.floor(r() * 30)),
    })),
  };
});

export const SHOW_BY_ID = new Map(SHOWS.map((s) => [s.id, s]));
export const EPISODE_BY_ID = new Map(SHOWS.flatMap((s) => s.episodes.map((e) => [e.id, e] as const)));
