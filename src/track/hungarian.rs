//! Minimum-cost assignment (Hungarian method with potentials, O(n²·m)) for small matrices.

/// Pairs (row, column) minimising the total cost, each row and column used at most once; pairs
/// costing more than `max_cost` (or not finite) are left unassigned.
pub fn assign(costs: &[Vec<f32>], max_cost: f32) -> Vec<(usize, usize)> {
    let rows = costs.len();
    let cols = costs.first().map_or(0, Vec::len);
    if rows == 0 || cols == 0 {
        return Vec::new();
    }
    // Forbidden pairs get a cost above any allowed total, so they are chosen only when forced.
    let forbidden = 1e6f64;
    let cost = |r: usize, c: usize| -> f64 {
        let v = costs[r][c];
        if v.is_finite() && v <= max_cost {
            v as f64
        } else {
            forbidden
        }
    };
    // The algorithm needs rows ≤ columns: transpose otherwise.
    let transposed = rows > cols;
    let (n, m) = if transposed {
        (cols, rows)
    } else {
        (rows, cols)
    };
    let at = |i: usize, j: usize| if transposed { cost(j, i) } else { cost(i, j) };

    let mut u = vec![0f64; n + 1];
    let mut v = vec![0f64; m + 1];
    let mut matched_row = vec![0usize; m + 1]; // column j → row (1-based), 0 = free
    let mut way = vec![0usize; m + 1];
    for i in 1..=n {
        matched_row[0] = i;
        let mut j0 = 0;
        let mut min_to = vec![f64::INFINITY; m + 1];
        let mut used = vec![false; m + 1];
        loop {
            used[j0] = true;
            let i0 = matched_row[j0];
            let mut delta = f64::INFINITY;
            let mut j1 = 0;
            for j in 1..=m {
                if !used[j] {
                    let reduced = at(i0 - 1, j - 1) - u[i0] - v[j];
                    if reduced < min_to[j] {
                        min_to[j] = reduced;
                        way[j] = j0;
                    }
                    if min_to[j] < delta {
                        delta = min_to[j];
                        j1 = j;
                    }
                }
            }
            for j in 0..=m {
                if used[j] {
                    u[matched_row[j]] += delta;
                    v[j] -= delta;
                } else {
                    min_to[j] -= delta;
                }
            }
            j0 = j1;
            if matched_row[j0] == 0 {
                break;
            }
        }
        loop {
            let j1 = way[j0];
            matched_row[j0] = matched_row[j1];
            j0 = j1;
            if j0 == 0 {
                break;
            }
        }
    }
    let mut pairs = Vec::new();
    for (j, &i) in matched_row.iter().enumerate().skip(1) {
        if i == 0 {
            continue;
        }
        let (r, c) = if transposed {
            (j - 1, i - 1)
        } else {
            (i - 1, j - 1)
        };
        if cost(r, c) < forbidden {
            pairs.push((r, c));
        }
    }
    pairs.sort_unstable();
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brute_force(costs: &[Vec<f32>]) -> f32 {
        // All permutations of a 4×4 matrix.
        let mut best = f32::INFINITY;
        let idx = [0usize, 1, 2, 3];
        fn permute(k: usize, idx: &mut [usize; 4], costs: &[Vec<f32>], best: &mut f32) {
            if k == 4 {
                let total: f32 = (0..4).map(|r| costs[r][idx[r]]).sum();
                *best = best.min(total);
                return;
            }
            for i in k..4 {
                idx.swap(k, i);
                permute(k + 1, idx, costs, best);
                idx.swap(k, i);
            }
        }
        permute(0, &mut idx.clone(), costs, &mut best);
        best
    }

    #[test]
    fn finds_the_optimal_assignment() {
        let mut state = 7u32;
        for _ in 0..50 {
            let costs: Vec<Vec<f32>> = (0..4)
                .map(|_| {
                    (0..4)
                        .map(|_| {
                            state = state.wrapping_mul(1664525).wrapping_add(1013904223);
                            (state >> 16) as f32 / 65536.0
                        })
                        .collect()
                })
                .collect();
            let pairs = assign(&costs, f32::INFINITY);
            assert_eq!(pairs.len(), 4);
            let total: f32 = pairs.iter().map(|&(r, c)| costs[r][c]).sum();
            assert!((total - brute_force(&costs)).abs() < 1e-5);
        }
    }

    #[test]
    fn rectangular_and_gated() {
        // 3 tracks, 2 faces; track 1 is too far from anything.
        let costs = vec![vec![0.1, 0.9], vec![5.0, 5.0], vec![0.8, 0.2]];
        assert_eq!(assign(&costs, 1.0), vec![(0, 0), (2, 1)]);
        let wide = vec![vec![0.5, 0.1, 0.9]];
        assert_eq!(assign(&wide, 1.0), vec![(0, 1)]);
        assert!(assign(&[], 1.0).is_empty());
        assert!(assign(&[vec![f32::NAN]], 1.0).is_empty());
    }
}
